//! Issue 13, item 3: a param or input path substituted into `cmd` never runs as shell,
//! whatever quoting surrounds its placeholder.

use crate::sandbox::Sandbox;

/// Values that ran `touch PWNED` when pasted into a command inside quotes.
const HOSTILE: &[&str] = &[
    "$(touch PWNED)",
    "`touch PWNED`",
    "'; touch PWNED; '",
    "\"; touch PWNED; \"",
    "x\ntouch PWNED",
    "x\nEOF\ntouch PWNED",
    "* ${HOME} \\ $0",
];

/// A placeholder in each context: (name, command writing `OUT`).
const CONTEXTS: &[(&str, &str)] = &[
    ("bare", "printf %s ${params.v} > OUT"),
    ("double", "printf %s \"${params.v}\" > OUT"),
    ("single", "printf %s '${params.v}' > OUT"),
    ("subst", "printf %s \"$(printf %s ${params.v})\" > OUT"),
    ("heredoc", "cat > OUT <<EOF\n${params.v}\nEOF"),
    ("comment", "printf done > OUT # ${params.v}"),
];

/// What a context's output holds for a value.
fn expected(context: &str, value: &str) -> String {
    match context {
        "heredoc" => format!("{value}\n"),
        "comment" => "done".to_string(),
        _ => value.to_string(),
    }
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[test]
fn a_hostile_param_never_runs_whatever_quoting_surrounds_it() {
    let mut pipeline = String::new();
    for (context, cmd) in CONTEXTS {
        for (i, value) in HOSTILE.iter().enumerate() {
            let stage = format!("{context}_{i}");
            let cmd = cmd.replace("OUT", &format!("{stage}.out"));
            pipeline += &format!(
                "[stages.{stage}]\ncmd = {}\noutputs = [\"{stage}.out\"]\n[stages.{stage}.params]\nv = {}\n\n",
                toml_string(&cmd),
                toml_string(value)
            );
        }
    }
    let sb = Sandbox::new().pipeline(&pipeline);
    sb.build().success();
    assert!(!sb.exists("PWNED"), "a value ran as shell");
    for (context, _) in CONTEXTS {
        for (i, value) in HOSTILE.iter().enumerate() {
            assert_eq!(sb.read(&format!("{context}_{i}.out")), expected(context, value), "{context} {value:?}");
        }
    }
}

#[test]
fn an_input_file_named_like_a_command_substitution_is_only_read() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.bare]
            cmd = "cat ${inputs} > bare.txt"
            inputs = ["in/*.txt"]
            outputs = ["bare.txt"]

            [stages.quoted]
            cmd = "cat \"${inputs}\" > quoted.txt"
            inputs = ["in/*.txt"]
            outputs = ["quoted.txt"]
            "#,
        )
        .file("in/$(touch PWNED).txt", "content\n");
    sb.build().success();
    assert!(!sb.exists("PWNED"), "a file name ran as shell");
    assert_eq!(sb.read("bare.txt"), "content\n");
    assert_eq!(sb.read("quoted.txt"), "content\n");
}

#[test]
fn cat_inputs_gets_one_argument_per_path_even_with_a_space_in_a_name() {
    let sb = Sandbox::new()
        .pipeline(
            r#"
            [stages.join]
            cmd = "cat ${inputs} > ${outputs}"
            inputs = ["a b.txt", "c.txt"]
            outputs = ["all out.txt"]
            "#,
        )
        .file("a b.txt", "A\n")
        .file("c.txt", "C\n");
    sb.build().success();
    assert_eq!(sb.read("all out.txt"), "A\nC\n");
}

#[test]
fn an_integer_param_works_in_arithmetic_and_any_other_value_fails_the_stage() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.number]
        cmd = "echo $(( ${params.n}0 * 2 )) > number.out"
        outputs = ["number.out"]
        params = { n = 21 }

        [stages.text]
        cmd = "echo $(( ${params.n} + 1 )) > text.out"
        outputs = ["text.out"]
        params = { n = "a[$(touch PWNED)]" }
        "#,
    );
    sb.build().failure();
    assert_eq!(sb.read("number.out"), "420\n", "digits after a placeholder are not part of it");
    assert!(!sb.exists("PWNED"), "a value ran as shell");
    assert!(sb.read(".dagrun/logs/1/text.log").contains("DAGRUN_ARG_1_IS_NOT_AN_INTEGER"));
}

#[test]
fn a_placeholder_in_a_quoted_here_document_is_refused_before_anything_runs() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.s]
        cmd = """
        cat > cfg.txt <<'EOF'
        window=${params.window}
        EOF
        """
        outputs = ["cfg.txt"]
        params = { window = 20 }
        "#,
    );
    let run = sb.build().usage_error();
    assert!(run.stderr().contains("`${params.window}` is inside a quoted here-document"), "{}", run.stderr());
    assert!(run.stderr().contains("(`<<EOF`)"), "{}", run.stderr());
    assert!(!sb.exists("cfg.txt"));
}

#[test]
fn a_stage_sees_its_own_dagrun_variables_and_never_those_dagrun_inherited() {
    // An inherited DAGRUN_ATTEMPT beside the stage's own would hide the stage's token from
    // a later build looking for what a killed one left running; a stale DAGRUN_ARG_1 or
    // DAGRUN_ARG_9 is another run's value.
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.s]
        cmd = "env | grep -E '^DAGRUN_(STAGE|ATTEMPT|ARG_)' | sort > vars.txt"
        outputs = ["vars.txt"]
        params = { v = "mine" }
        [stages.t]
        cmd = "printf '%s\n' ${params.v} > t.txt"
        outputs = ["t.txt"]
        params = { v = "theirs" }
        "#,
    );
    let out = sb
        .command(&["build"])
        .env("DAGRUN_ATTEMPT", "inherited-1")
        .env("DAGRUN_STAGE", "outer")
        .env("DAGRUN_ARG_1", "stale")
        .env("DAGRUN_ARG_9", "stale")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = sb.column("SELECT attempt_token FROM stage_runs WHERE component = 's'");
    assert_eq!(sb.read("vars.txt"), format!("DAGRUN_ATTEMPT={}\nDAGRUN_STAGE=s\n", token[0]));
    assert_eq!(sb.read("t.txt"), "theirs\n");
}

#[test]
fn a_value_holding_a_nul_byte_fails_its_stage_and_names_the_variable() {
    let sb = Sandbox::new().pipeline(
        r#"
        [stages.s]
        cmd = "printf %s ${params.v} > out.txt"
        outputs = ["out.txt"]
        params = { v = "a\u0000b" }
        "#,
    );
    let run = sb.build().failure();
    assert!(
        run.stderr().contains(
            "the value of DAGRUN_ARG_1 (a substituted param or path) holds a NUL byte, which no process can be given"
        ),
        "{}",
        run.stderr()
    );
    assert_eq!(sb.column("SELECT last_status FROM orchestrator_state"), ["failed"]);
}
