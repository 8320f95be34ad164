//! Built-ins for dagrun's own tests, in debug builds only (`cargo test` builds those):
//! `debug.wait` stands for a long built-in, one that honours being stopped or one that
//! ignores it, which no real built-in should be.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dagrun::Registry;
use dagrun::builtin::{Builtin, BuiltinContext, BuiltinError};

/// `fn = "debug.wait"`, params `seconds` (default 60) and `honour_cancel` (default true):
/// waits, then writes `done` to each output.
struct Wait;

impl Builtin for Wait {
    fn version(&self) -> &str {
        "1"
    }

    fn run(&self, ctx: &mut BuiltinContext<'_>) -> Result<(), BuiltinError> {
        let seconds = ctx.params.get("seconds").and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)));
        let honour = ctx.params.get("honour_cancel").and_then(toml::Value::as_bool).unwrap_or(true);
        let until = Instant::now() + Duration::from_secs_f64(seconds.unwrap_or(60.0));
        while Instant::now() < until {
            if honour && ctx.cancel.load(Ordering::SeqCst) {
                return Err("stopped".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for output in &ctx.outputs {
            std::fs::write(output, "done\n")?;
        }
        Ok(())
    }
}

pub fn register(registry: &mut Registry) {
    registry.register("debug.wait", Wait);
}
