//! What starts next: which dirty stages wait on which, which are ready, and which a
//! failure blocks. Bookkeeping over the DAG only; it records nothing and runs nothing, so
//! that any executor (local threads, a cluster's queue) can share it.

use std::collections::VecDeque;

use crate::graph::Dag;
use crate::spec::StageIdx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Unselected,
    /// Dirty, waiting on this many dirty upstream stages.
    Waiting(usize),
    Queued,
    Done,
}

/// Where each stage of a build is: not selected, waiting on its upstream, handed out, or done.
pub(super) struct Schedule {
    slots: Vec<Slot>,
    ready: VecDeque<StageIdx>,
}

impl Schedule {
    /// `dirty(idx)`: `None` for a stage outside the build, else whether it must be
    /// checked (dirty, or downstream of a dirty stage). Up-to-date stages start done; a
    /// dirty stage waits on its dirty upstream stages, and is ready when there are none.
    pub(super) fn new(dag: &Dag, dirty: impl Fn(StageIdx) -> Option<bool>) -> Schedule {
        let mut slots: Vec<Slot> = (0..dag.len())
            .map(|idx| match dirty(idx) {
                None => Slot::Unselected,
                Some(false) => Slot::Done,
                Some(true) => Slot::Waiting(0),
            })
            .collect();
        let mut ready = VecDeque::new();
        for idx in 0..slots.len() {
            if slots[idx] == Slot::Waiting(0) {
                let pending = dag.upstream(idx).filter(|&up| matches!(slots[up], Slot::Waiting(_))).count();
                slots[idx] = Slot::Waiting(pending);
                if pending == 0 {
                    ready.push_back(idx);
                }
            }
        }
        Schedule { slots, ready }
    }

    /// How many stages wait to be checked or run.
    pub(super) fn waiting(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s, Slot::Waiting(_))).count()
    }

    /// The next ready stage, in the order stages became ready; it is then handed out.
    pub(super) fn next(&mut self) -> Option<StageIdx> {
        let idx = self.ready.pop_front()?;
        self.slots[idx] = Slot::Queued;
        Some(idx)
    }

    /// The stage is over without releasing anything (it failed, or never started).
    pub(super) fn finish(&mut self, idx: StageIdx) {
        self.slots[idx] = Slot::Done;
    }

    /// The stage finished well: downstream stages with nothing else to wait for are ready.
    pub(super) fn release(&mut self, dag: &Dag, idx: StageIdx) {
        self.slots[idx] = Slot::Done;
        for down in dag.downstream(idx) {
            if let Slot::Waiting(pending) = self.slots[down] {
                self.slots[down] = Slot::Waiting(pending - 1);
                if pending == 1 {
                    self.ready.push_back(down);
                }
            }
        }
    }

    /// Every stage still waiting (directly or not) on `idx`, now done without running, in
    /// the order they are found.
    pub(super) fn block_downstream(&mut self, dag: &Dag, idx: StageIdx) -> Vec<StageIdx> {
        let mut blocked = Vec::new();
        let mut stack: Vec<StageIdx> = dag.downstream(idx).collect();
        while let Some(down) = stack.pop() {
            if !matches!(self.slots[down], Slot::Waiting(_)) {
                continue;
            }
            self.slots[down] = Slot::Done;
            blocked.push(down);
            stack.extend(dag.downstream(down));
        }
        blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec;
    use std::path::Path;

    /// a -> b -> d, a -> c -> d, and e alone.
    fn diamond() -> Dag {
        let text = r#"
            [stages.a]
            cmd = "x"
            outputs = ["a"]
            [stages.b]
            cmd = "x"
            inputs = ["a"]
            outputs = ["b"]
            [stages.c]
            cmd = "x"
            inputs = ["a"]
            outputs = ["c"]
            [stages.d]
            cmd = "x"
            inputs = ["b", "c"]
            [stages.e]
            cmd = "x"
        "#;
        let spec = parse_spec(Path::new("pipeline.toml"), Path::new("/p"), text.to_string(), &[]).unwrap();
        let names: Vec<&str> = spec.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"], "stages are indexed in name order");
        Dag::build(&spec).unwrap()
    }

    #[test]
    fn a_stage_is_ready_once_every_dirty_upstream_stage_is_released() {
        let dag = diamond();
        let mut s = Schedule::new(&dag, |_| Some(true));
        assert_eq!(s.waiting(), 5);
        assert_eq!((s.next(), s.next(), s.next()), (Some(0), Some(4), None), "a and e first");
        s.release(&dag, 0);
        let mut both = [s.next(), s.next()];
        both.sort();
        assert_eq!((both, s.next()), ([Some(1), Some(2)], None), "b and c, in the DAG's order");
        s.release(&dag, 1);
        assert_eq!(s.next(), None, "d still waits on c");
        s.release(&dag, 2);
        assert_eq!(s.next(), Some(3));
    }

    #[test]
    fn up_to_date_and_unselected_stages_are_not_waited_on() {
        let dag = diamond();
        // a and c up to date, e not in the build: b is ready at once, d waits on b only.
        let mut s = Schedule::new(&dag, |idx| match idx {
            0 | 2 => Some(false),
            4 => None,
            _ => Some(true),
        });
        assert_eq!(s.waiting(), 2);
        assert_eq!((s.next(), s.next()), (Some(1), None));
        s.release(&dag, 1);
        assert_eq!(s.next(), Some(3));
    }

    #[test]
    fn a_failure_blocks_everything_downstream_once() {
        let dag = diamond();
        let mut s = Schedule::new(&dag, |_| Some(true));
        assert_eq!(s.next(), Some(0));
        s.finish(0);
        let mut blocked = s.block_downstream(&dag, 0);
        blocked.sort();
        assert_eq!(blocked, [1, 2, 3], "d is blocked once, though two paths lead to it");
        assert_eq!((s.next(), s.next()), (Some(4), None), "e does not depend on a");
        assert_eq!(s.waiting(), 0);
    }
}
