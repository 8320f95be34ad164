//! Independent stages run at the same time; `-j` bounds how many. Shown by the recorded
//! start and end times of each stage, not by wall-clock assertions.

use crate::sandbox::Sandbox;

const TWO_SLEEPERS: &str = r#"
[stages.left]
cmd = "sleep 0.5; echo > left.out"
outputs = ["left.out"]

[stages.right]
cmd = "sleep 0.5; echo > right.out"
outputs = ["right.out"]

[stages.join]
cmd = "cat left.out right.out > join.out"
inputs = ["left.out", "right.out"]
outputs = ["join.out"]
"#;

fn intervals(sb: &Sandbox) -> Vec<(String, String, String)> {
    let db = sb.db();
    let mut stmt = db.prepare("SELECT component, started_at, finished_at FROM stage_runs ORDER BY component").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

#[test]
fn independent_stages_overlap_with_two_jobs() {
    let sb = Sandbox::new().pipeline(TWO_SLEEPERS);
    sb.dagrun(&["build", "-j", "2"]).success();
    let runs = intervals(&sb);
    let (join, left, right) = (&runs[0], &runs[1], &runs[2]);
    assert!(left.1 < right.2 && right.1 < left.2, "left and right overlap: {runs:?}");
    assert!(join.1 >= left.2 && join.1 >= right.2, "join starts after both: {runs:?}");
}

#[test]
fn one_job_runs_stages_one_at_a_time() {
    let sb = Sandbox::new().pipeline(TWO_SLEEPERS);
    sb.dagrun(&["build", "-j", "1"]).success();
    let runs = intervals(&sb);
    let (left, right) = (&runs[1], &runs[2]);
    assert!(left.2 <= right.1 || right.2 <= left.1, "no overlap: {runs:?}");
}
