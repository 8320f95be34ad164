//! Random DAGs of shell stages and random edits, checked against a reference model:
//! after each build exactly the stages the model says were affected have run (or, when
//! what they read was seen before, were restored from the run-cache), and a second build
//! runs nothing.
//!
//! Stage `sI` writes `outI.txt` = the first line of `srcI.txt`, its param `p`, then its
//! upstream outputs. Appending a line to a source changes the input but not the output,
//! so early cutoff is exercised as well as propagation.

use proptest::prelude::*;

use crate::sandbox::Sandbox;

#[derive(Debug, Clone)]
enum Edit {
    /// Append a line: the stage re-runs, its output does not change.
    Append(usize),
    /// Replace the first line (possibly with the same text: then nothing changes).
    Rewrite(usize, u8),
    /// Move the mtime only.
    Touch(usize),
    /// Set the param (possibly to the same value).
    Param(usize, u8),
    DeleteOutput(usize),
}

#[derive(Debug, Clone)]
struct Case {
    /// `ups[i]`: the upstream stages of stage `i`, all lower-numbered.
    ups: Vec<Vec<usize>>,
    edits: Vec<Edit>,
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..=5)
        .prop_flat_map(|n| {
            let ups = (0..n).map(|i| proptest::collection::vec(any::<bool>(), i)).collect::<Vec<_>>();
            let edit = prop_oneof![
                (0..n).prop_map(Edit::Append),
                (0..n, 0u8..3).prop_map(|(i, v)| Edit::Rewrite(i, v)),
                (0..n).prop_map(Edit::Touch),
                (0..n, 0u8..3).prop_map(|(i, v)| Edit::Param(i, v)),
                (0..n).prop_map(Edit::DeleteOutput),
            ];
            (ups, proptest::collection::vec(edit, 1..=5))
        })
        .prop_map(|(masks, edits)| Case {
            ups: masks
                .iter()
                .map(|mask| mask.iter().enumerate().filter(|&(_, &on)| on).map(|(j, _)| j).collect())
                .collect(),
            edits,
        })
}

/// What the model remembers of a stage's last run.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    src: String,
    param: u8,
    upstream_outputs: Vec<String>,
    output: String,
}

struct Model {
    ups: Vec<Vec<usize>>,
    src: Vec<String>,
    param: Vec<u8>,
    output_present: Vec<bool>,
    recorded: Vec<Option<Recorded>>,
    /// The run-cache: each stage's (source, param, upstream outputs) that have run.
    seen: std::collections::HashSet<(usize, String, u8, Vec<String>)>,
    /// The stages the last build restored.
    restored: Vec<String>,
}

impl Model {
    /// The stages a build runs, and the new recorded state.
    fn build(&mut self) -> Vec<String> {
        let mut ran = Vec::new();
        self.restored.clear();
        let mut outputs: Vec<String> = Vec::new();
        for i in 0..self.ups.len() {
            let upstream_outputs: Vec<String> = self.ups[i].iter().map(|&j| outputs[j].clone()).collect();
            let current = self.recorded[i].as_ref();
            let dirty = match current {
                None => true,
                Some(r) => {
                    r.src != self.src[i]
                        || r.param != self.param[i]
                        || r.upstream_outputs != upstream_outputs
                        || !self.output_present[i]
                }
            };
            if dirty {
                let key = (i, self.src[i].clone(), self.param[i], upstream_outputs.clone());
                if self.seen.contains(&key) {
                    self.restored.push(format!("s{i}"));
                } else {
                    ran.push(format!("s{i}"));
                    self.seen.insert(key);
                }
                let first_line = self.src[i].lines().next().unwrap_or("");
                let output = format!("{first_line}\n{}\n{}", self.param[i], upstream_outputs.concat());
                self.recorded[i] =
                    Some(Recorded { src: self.src[i].clone(), param: self.param[i], upstream_outputs, output });
                self.output_present[i] = true;
            }
            outputs.push(self.recorded[i].as_ref().unwrap().output.clone());
        }
        ran.sort();
        self.restored.sort();
        ran
    }
}

fn pipeline(ups: &[Vec<usize>], params: &[u8]) -> String {
    let mut text = String::new();
    for (i, up) in ups.iter().enumerate() {
        let up_files: Vec<String> = up.iter().map(|j| format!("out{j}.txt")).collect();
        let cat = if up.is_empty() { String::new() } else { format!(" cat {};", up_files.join(" ")) };
        let inputs: Vec<String> =
            std::iter::once(format!("src{i}.txt")).chain(up_files).map(|p| format!("\"{p}\"")).collect();
        text.push_str(&format!(
            "[stages.s{i}]\ncmd = \"echo s{i} >> ran.log; {{ head -n1 src{i}.txt; echo ${{params.p}};{cat} }} > out{i}.txt\"\n\
             inputs = [{}]\noutputs = [\"out{i}.txt\"]\nparams = {{ p = {} }}\n\n",
            inputs.join(", "),
            params[i]
        ));
    }
    text
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let n = case.ups.len();
    let mut model = Model {
        ups: case.ups.clone(),
        src: (0..n).map(|i| format!("v0\nfrom {i}\n")).collect(),
        param: vec![0; n],
        output_present: vec![false; n],
        recorded: vec![None; n],
        seen: Default::default(),
        restored: Vec::new(),
    };
    let sb = Sandbox::new().pipeline(&pipeline(&model.ups, &model.param));
    for i in 0..n {
        sb.write(&format!("src{i}.txt"), &model.src[i]);
    }
    sb.dagrun(&["build", "-j", "2"]).success();
    prop_assert_eq!(sb.ran(), model.build());
    for edit in &case.edits {
        match *edit {
            Edit::Append(i) => {
                model.src[i].push_str("more\n");
                sb.write(&format!("src{i}.txt"), &model.src[i]);
            }
            Edit::Rewrite(i, v) => {
                let rest: String = model.src[i].lines().skip(1).map(|l| format!("{l}\n")).collect();
                model.src[i] = format!("v{v}\n{rest}");
                sb.write(&format!("src{i}.txt"), &model.src[i]);
            }
            Edit::Touch(i) => sb.touch(&format!("src{i}.txt")),
            Edit::Param(i, v) => {
                model.param[i] = v;
                sb.write("pipeline.toml", &pipeline(&model.ups, &model.param));
            }
            Edit::DeleteOutput(i) => {
                if sb.exists(&format!("out{i}.txt")) {
                    sb.remove(&format!("out{i}.txt"));
                    model.output_present[i] = false;
                }
            }
        }
        sb.dagrun(&["build", "-j", "2"]).success();
        prop_assert_eq!(sb.ran(), model.build(), "after {:?}", edit);
        let restored = sb.column(
            "SELECT component FROM stage_runs WHERE status = 'restored' AND run_id = (SELECT max(run_id) FROM runs) ORDER BY component",
        );
        prop_assert_eq!(&restored, &model.restored, "restored after {:?}", edit);
        for i in 0..n {
            prop_assert_eq!(sb.read(&format!("out{i}.txt")), model.recorded[i].as_ref().unwrap().output.clone());
        }
    }
    sb.dagrun(&["build", "-j", "2"]).success();
    prop_assert_eq!(sb.ran(), Vec::<String>::new(), "a second build runs nothing");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn builds_run_exactly_what_a_reference_model_says(case in case()) {
        check(case)?;
    }
}
