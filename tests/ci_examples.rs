//! The CI examples' own scripts, run as the CI would run them: the GitHub Actions step that
//! writes the pull-request comment keeps it within GitHub's limit (65,536 characters) and
//! never cuts a table or a code block. No engine needed.

use std::path::Path;
use std::process::Command;

/// The `run:` script of the step named `name` in the job `job` of a workflow.
fn step_script(workflow: &str, job: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(workflow);
    let text = std::fs::read_to_string(&path).expect("the workflow is readable");
    let docs = outpostctl::manifest::yaml::parse(&text, Default::default())
        .into_result()
        .unwrap_or_else(|e| panic!("{workflow} is not YAML: {e:?}"));
    let steps = docs[0].value["jobs"][job]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("{workflow} has no job `{job}` with steps"));
    steps
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["run"].as_str())
        .unwrap_or_else(|| panic!("{workflow} has no step `{name}` with a script"))
        .to_string()
}

/// Runs the comment step on `plan_md` and `plan_err` (what `plan --format markdown` printed
/// on stdout and stderr) after a plan that exited `code`; the comment it wrote.
fn comment_for(plan_md: &str, plan_err: &str, code: i32) -> String {
    let script = step_script(
        "examples/ci/github-actions.yml",
        "plan",
        "Write the comment",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("plan.md"), plan_md).expect("plan.md");
    std::fs::write(dir.path().join("plan.err"), plan_err).expect("plan.err");
    // GitHub runs `run:` scripts with `bash --noprofile --norc -eo pipefail`.
    let out = Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PLAN_EXIT", code.to_string())
        .env("RUN_URL", "https://github.com/o/r/actions/runs/1")
        .env("HEAD_SHA", "0123456789abcdef")
        .env("BASE_REF", "main")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "the step failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.path().join("comment.md")).expect("comment.md is written")
}

const HEADING: &str = "### outpostctl plan for `homelab`: 400 to recreate";

fn plan_of(rows: usize) -> String {
    let mut md = format!(
        "{HEADING}\n\n#### Integration `local` (unix:///var/run/docker.sock)\n\n| | Action | Outpost | Container | Details |\n|---|---|---|---|---|\n"
    );
    for i in 0..rows {
        md.push_str(&format!(
            "| 🟡 | recreate | Proxy {i} | `ak-proxy-{i}` | ``labels.traefik.http.routers.ak-proxy-{i}-router.rule: (Host(`a{i}.example.com`)) -> (Host(`b{i}.example.com`))`` |\n"
        ));
    }
    md
}

/// Each fence and `<details>` opened is closed.
fn assert_balanced(comment: &str) {
    assert_eq!(
        comment.matches("<details>").count(),
        comment.matches("</details>").count(),
        "{comment}"
    );
    let fences = comment.lines().filter(|l| l.starts_with("```")).count();
    assert_eq!(fences % 2, 0, "an unclosed code block:\n{comment}");
}

#[test]
fn a_plan_that_fits_is_posted_whole_with_its_diagnostics() {
    let plan = plan_of(3);
    let comment = comment_for(&plan, "warning: something to know\n", 2);
    assert!(
        comment.starts_with("<!-- outpostctl-plan -->\n"),
        "{comment}"
    );
    assert!(comment.contains(&plan), "{comment}");
    assert!(comment.contains("warning: something to know"), "{comment}");
    assert!(comment.contains("Planned for 0123456"), "{comment}");
    assert!(!comment.contains("CAUTION"), "{comment}");
    assert_balanced(&comment);
}

#[test]
fn a_plan_too_long_for_a_comment_is_summed_up_not_cut() {
    let plan = plan_of(1500);
    assert!(plan.chars().count() > 65_536);
    let comment = comment_for(&plan, "", 2);
    assert!(
        comment.chars().count() <= 65_536,
        "{} characters",
        comment.len()
    );
    assert!(
        comment.contains(HEADING),
        "the heading and its summary stay"
    );
    assert!(comment.contains("too long for a comment"), "{comment}");
    assert!(
        !comment.contains("| recreate |"),
        "no half table: {comment}"
    );
    assert_balanced(&comment);
}

#[test]
fn a_failed_plan_with_endless_diagnostics_keeps_its_note_and_closes_its_block() {
    let err: String = (0..5000)
        .map(|i| format!("  × m.yaml:{i}:1: environment variable `AK_{i}` is not set ```\n"))
        .collect();
    let comment = comment_for("### outpostctl plan: the manifests are invalid\n", &err, 1);
    assert!(
        comment.chars().count() <= 65_536,
        "{} characters",
        comment.len()
    );
    assert!(comment.contains("> [!CAUTION]"), "{comment}");
    assert!(comment.contains("m.yaml:0:1"), "the first diagnostics stay");
    assert!(comment.contains("the rest in the artifact"), "{comment}");
    assert_balanced(&comment);
    // The fence is longer than the backtick runs inside, so the text cannot close it.
    assert!(comment.contains("\n````\n"), "{comment}");
}
