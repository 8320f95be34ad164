//! SIGINT and SIGTERM, mapped onto a build's [`CancelToken`].

use dagrun::CancelToken;

/// Calls `first` on the first SIGINT/SIGTERM and `cancel_now` on every later one, from a
/// thread of its own. Commands decide what the first signal means (stop or drain).
pub fn on_stop_signals(cancel: &CancelToken, first: impl Fn(&CancelToken) + Send + 'static) {
    let Ok(mut signals) =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
    else {
        return;
    };
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        for (count, _) in signals.forever().enumerate() {
            if count == 0 {
                first(&cancel);
            } else {
                cancel.cancel_now();
            }
        }
    });
}
