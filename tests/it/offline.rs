//! `endorm score` end to end through the binary: output per line, errors per line, resume, and
//! an existing output never truncated without --force.

use crate::common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn endorm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_endorm"))
}

/// Adds `endorm score`'s arguments for the tests: small context, two threads, the default model.
fn score_args(command: &mut Command, input: &Path, output: &Path, extra: &[&str]) {
    command
        .args([
            "score",
            "--quiet",
            "--threads",
            "2",
            "--n-ctx",
            "1024",
            "--model",
        ])
        .arg(common::model_path())
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra);
}

fn score(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut command = endorm();
    score_args(&mut command, input, output, extra);
    command.output().expect("run endorm")
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const GOOD_A: &str = r#"{"id": "a", "prompt": "What is 2+2?", "candidates": ["4", "5"]}"#;
const GOOD_B: &str =
    r#"{"id": "b", "format": "raw", "prompt": "Once upon a", "candidates": [" time", " banana"]}"#;
const BAD: &str = r#"{"id": "bad", "prompt": "Hi", "candidates": []}"#;

#[test]
fn scores_every_line_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, format!("{GOOD_A}\n{BAD}\nnot json\n\n{GOOD_B}\n")).unwrap();

    let run = score(&input, &output, &[]);
    assert!(
        !run.status.success(),
        "bad lines make the exit status non-zero"
    );
    let out = lines(&output);
    let ids: Vec<&Value> = out.iter().map(|l| &l["id"]).collect();
    assert_eq!(
        ids,
        [
            &Value::from("a"),
            &Value::from("bad"),
            &Value::from(3),
            &Value::from("b")
        ]
    );
    assert_eq!(out[0]["results"].as_array().unwrap().len(), 2);
    assert_eq!(out[1]["error"]["code"], "invalid_request");
    assert_eq!(out[2]["error"]["code"], "invalid_json");
    assert_eq!(
        out[3]["model"],
        endorm::paths::model_id(&common::model_path())
    );
    assert!(
        out[3]["results"][0]["score"].as_f64().unwrap()
            > out[3]["results"][1]["score"].as_f64().unwrap(),
        "\" time\" follows \"Once upon a\" better than \" banana\""
    );
}

/// `endorm rerank ARGS` on the test model: its table.
fn rerank_table(args: &[&str]) -> String {
    let rerank = endorm()
        .args(["rerank", "--threads", "2", "--n-ctx", "1024"])
        .args(args)
        .arg("--model")
        .arg(common::model_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&rerank.stderr);
    assert!(rerank.status.success(), "{stderr}");
    String::from_utf8(rerank.stdout).unwrap()
}

#[test]
fn the_same_line_gives_the_same_numbers_as_rerank() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, format!("{GOOD_A}\n")).unwrap();
    assert!(score(&input, &output, &[]).status.success());
    let offline = &lines(&output)[0];

    let table = rerank_table(&["--prompt", "What is 2+2?", "4", "5"]);
    let best = &offline["results"][offline["order"][0].as_u64().unwrap() as usize];
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains(&format!("{:.3}", best["endo"].as_f64().unwrap())),
        "{table}\n{offline}"
    );
}

#[test]
fn rerank_with_the_terms_beyond_the_paper_ranks_as_score_does() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    let line = r#"{"id": "t", "prompt": "What is 2+2?", "candidates": ["4", "5", "It is 4."],
        "aggregate": "endo_mean", "contrast": "neutral", "reviewer": true, "consensus": 1}"#;
    std::fs::write(&input, format!("{}\n", line.replace('\n', " "))).unwrap();
    assert!(score(&input, &output, &[]).status.success());
    let offline = &lines(&output)[0];
    assert!(offline["results"][0]["neutral"].is_f64(), "{offline}");

    let table = rerank_table(&[
        "--prompt",
        "What is 2+2?",
        "--aggregate",
        "endo_mean",
        "--neutral",
        "--reviewer",
        "--consensus",
        "1",
        "4",
        "5",
        "It is 4.",
    ]);
    assert!(
        table.contains("endo_mean-neutral+reviewer+consensus"),
        "{table}"
    );
    // Row i of the table is the i-th best of the offline response, with its combined score.
    for (row, index) in table
        .lines()
        .skip(1)
        .zip(offline["order"].as_array().unwrap())
    {
        let result = &offline["results"][index.as_u64().unwrap() as usize];
        let score = format!("{:.3}", result["score"].as_f64().unwrap());
        assert!(
            row.split_whitespace().nth(1) == Some(score.as_str()),
            "{row} vs {result}"
        );
    }
}

#[test]
fn resume_skips_done_ids_and_existing_output_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, format!("{GOOD_A}\n")).unwrap();
    assert!(score(&input, &output, &[]).status.success());
    let first = std::fs::read_to_string(&output).unwrap();

    // A second run without --resume or --force refuses and leaves the output alone.
    std::fs::write(&input, format!("{GOOD_A}\n{GOOD_B}\n")).unwrap();
    let refused = score(&input, &output, &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), first);

    // --resume scores only the new id, after what was there.
    let resumed = score(&input, &output, &["--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let out = lines(&output);
    assert_eq!(out.len(), 2);
    assert!(std::fs::read_to_string(&output)
        .unwrap()
        .starts_with(&first));
    assert_eq!(out[1]["id"], "b");
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("1 skipped"));

    // --force starts over.
    assert!(score(&input, &output, &["--force"]).status.success());
    assert_eq!(lines(&output).len(), 2);
}

#[test]
fn shards_split_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, format!("{GOOD_A}\n{GOOD_B}\n")).unwrap();
    let mut seen = Vec::new();
    for shard in ["0/2", "1/2"] {
        let output = dir.path().join(format!("out-{}.jsonl", &shard[..1]));
        assert!(score(&input, &output, &["--shard", shard]).status.success());
        seen.extend(lines(&output).into_iter().map(|l| l["id"].clone()));
    }
    assert_eq!(seen, [Value::from("a"), Value::from("b")]);
}

#[test]
fn resume_keeps_every_line_a_user_left_in_the_output() {
    // An output a user edited: an error line deleted to retry it (leaving a blank line), a note
    // that is not JSON, and a line from another run. --resume keeps all of it and appends.
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, format!("{GOOD_A}\n")).unwrap();
    assert!(score(&input, &output, &[]).status.success());
    let first = std::fs::read_to_string(&output).unwrap();
    let edited = format!(
        "{first}\n   \nmy note: not JSON\n{{\"id\": \"other-run\", \"results\": []}}\n[1, 2]\n"
    );
    std::fs::write(&output, &edited).unwrap();

    std::fs::write(&input, format!("{GOOD_A}\n{GOOD_B}\n")).unwrap();
    let resumed = score(&input, &output, &["--resume"]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(text.starts_with(&edited), "lines were lost:\n{text}");
    let appended: Vec<Value> = text[edited.len()..]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(appended.len(), 1, "{text}");
    assert_eq!(appended[0]["id"], "b", "only the new id is scored: {text}");
    assert!(stderr.contains("1 skipped"), "{stderr}");
    for line in [4, 6] {
        assert!(
            stderr.contains(&format!("out.jsonl:{line}:")),
            "no warning for line {line}: {stderr}"
        );
    }
}

#[test]
fn resume_completes_a_whole_last_line_and_drops_only_a_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, format!("{GOOD_A}\n{GOOD_B}\n")).unwrap();
    assert!(score(&input, &output, &[]).status.success());
    let full = std::fs::read_to_string(&output).unwrap();
    let (line_a, line_b) = full.trim_end().split_once('\n').unwrap();

    // A whole record whose newline never made it to disk is kept (and its id skipped).
    std::fs::write(&output, format!("{line_a}\n{line_b}")).unwrap();
    let resumed = score(&input, &output, &["--resume"]);
    assert!(resumed.status.success());
    assert_eq!(std::fs::read_to_string(&output).unwrap(), full);

    // A record cut short is removed and scored again, after a warning.
    std::fs::write(
        &output,
        format!("{line_a}\n{}", &line_b[..line_b.len() / 2]),
    )
    .unwrap();
    let resumed = score(&input, &output, &["--resume"]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("cut short"), "{stderr}");
    let out = lines(&output);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["id"], "b");
}

#[test]
fn a_line_that_is_not_utf8_becomes_an_error_line_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    let mut bytes = format!("{GOOD_A}\n").into_bytes();
    bytes.extend_from_slice(
        b"{\"id\": \"latin1\", \"prompt\": \"caf\xe9\", \"candidates\": [\"x\"]}\r\n",
    );
    bytes.extend_from_slice(format!("{GOOD_B}\r\n").as_bytes());
    std::fs::write(&input, &bytes).unwrap();

    let run = score(&input, &output, &[]);
    assert!(
        !run.status.success(),
        "a bad line makes the exit status non-zero"
    );
    let out = lines(&output);
    let ids: Vec<&Value> = out.iter().map(|l| &l["id"]).collect();
    assert_eq!(ids, [&Value::from("a"), &Value::from(2), &Value::from("b")]);
    assert_eq!(out[1]["error"]["code"], "invalid_json");
    assert!(
        out[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8"),
        "{}",
        out[1]
    );
    assert_eq!(out[2]["results"].as_array().unwrap().len(), 2);

    // --resume reads past it too: everything is done, nothing is added.
    let before = std::fs::read_to_string(&output).unwrap();
    let resumed = score(&input, &output, &["--resume"]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("3 skipped"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), before);
}

/// An input of `n` good lines with ids `0..n`.
fn many_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            let line = if i % 2 == 0 { GOOD_A } else { GOOD_B };
            line.replacen("\"id\": \"a\"", &format!("\"id\": {i}"), 1)
                .replacen("\"id\": \"b\"", &format!("\"id\": {i}"), 1)
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Every output line is whole (ends in a newline, is a JSON object) and no id is there twice.
fn assert_whole_and_unique(output: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(output).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a torn last line:\n{text}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut ids: Vec<String> = lines.iter().map(|l| l["id"].to_string()).collect();
    ids.sort();
    let count = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicated ids:\n{text}");
    lines
}

/// Runs `score` with the output file's size capped at `blocks` KiB (RLIMIT_FSIZE, with SIGXFSZ
/// ignored so that a write past it fails with EFBIG as on a full disk); no root needed.
fn score_capped(input: &Path, output: &Path, blocks: u32, extra: &[&str]) -> std::process::Output {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {blocks} && exec \"$@\""))
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_endorm"));
    score_args(&mut command, input, output, extra);
    command.output().expect("run endorm under bash")
}

#[test]
fn a_full_disk_stops_the_run_with_whole_lines_and_resume_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, many_lines(6)).unwrap();
    let full = score_capped(&input, &output, 2, &[]);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success(), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let written = assert_whole_and_unique(&output);
    assert!(
        !written.is_empty() && written.len() < 6,
        "{}",
        written.len()
    );

    // Space again: --resume finishes it, each id once.
    let resumed = score(&input, &output, &["--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(assert_whole_and_unique(&output).len(), 6);
}

/// A small tmpfs, unmounted when dropped; `None` (with a message) where mounting is not allowed.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs(dir.to_owned())),
            Ok(out) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs here ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount ({e})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_real_full_disk_on_a_tmpfs_when_mounting_is_allowed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, many_lines(6)).unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "8k") else {
        return;
    };
    let output = disk.0.join("out.jsonl");
    // Fill the disk but for about two lines' worth.
    let filler = disk.0.join("filler");
    let _ = std::fs::write(&filler, vec![b'x'; 64 * 1024]);
    let size = std::fs::metadata(&filler).map_or(0, |m| m.len());
    std::fs::write(&filler, vec![b'x'; (size as usize).saturating_sub(2048)]).unwrap();

    let full = score(&input, &output, &[]);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success(), "{stderr}");
    assert!(
        stderr.contains("No space left") && stderr.contains("--resume"),
        "{stderr}"
    );
    let written = assert_whole_and_unique(&output);
    assert!(written.len() < 6, "{}", written.len());

    std::fs::remove_file(&filler).unwrap();
    let resumed = score(&input, &output, &["--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(assert_whole_and_unique(&output).len(), 6);
    drop(disk);
}

#[test]
fn two_runs_of_one_shard_cannot_write_one_output_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("part.jsonl"));
    std::fs::write(&input, many_lines(30)).unwrap();
    let shard = ["--shard", "2/3", "--resume"];
    let mut command = endorm();
    score_args(&mut command, &input, &output, &shard);
    let mut first = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start endorm score");
    // The output is created and locked before the model loads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !output.exists() {
        assert!(std::time::Instant::now() < deadline, "no output");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let started = std::time::Instant::now();
    let second = score(&input, &output, &shard);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("is being written by another run")
            && stderr.contains(&format!("pid {}", first.id())),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused at once, before loading the model: {:?}",
        started.elapsed()
    );
    let status = first.wait().expect("wait");
    assert!(status.success(), "the first run failed");
    // The first run's output is whole: lines 2, 5, ..., 29 of the input, once each.
    let ids: Vec<u64> = assert_whole_and_unique(&output)
        .iter()
        .map(|line| line["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, (0..30).filter(|i| i % 3 == 2).collect::<Vec<_>>());
}

/// `endorm verify` or `endorm merge` with `args`.
fn run_endorm(args: &[&std::ffi::OsStr]) -> std::process::Output {
    endorm().args(args).output().expect("run endorm")
}

#[test]
fn merge_and_verify_take_complete_shards_and_refuse_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.jsonl");
    // Seven lines, one of them a bad request (an error line) and one without an id.
    let mut text = many_lines(6);
    text.push_str(&format!("{BAD}\n"));
    text.push_str(r#"{"prompt": "Say yes.", "candidates": ["Yes.", "No."]}"#);
    text.push('\n');
    std::fs::write(&input, &text).unwrap();
    let parts: Vec<std::path::PathBuf> =
        (0..3).map(|i| d.join(format!("part-{i}.jsonl"))).collect();
    for (i, part) in parts.iter().enumerate() {
        score(&input, part, &["--shard", &format!("{i}/3"), "--resume"]);
    }
    let whole = d.join("whole.jsonl");
    score(&input, &whole, &[]);

    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let mut verify: Vec<&std::ffi::OsStr> = vec![os("verify"), os("--input"), input.as_os_str()];
    verify.extend(parts.iter().map(|p| p.as_os_str()));
    let verified = run_endorm(&verify);
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{report}");
    assert!(
        report.contains("8 input ids; 8 with exactly one output line (1 of them error lines)")
            && report.contains("complete"),
        "{report}"
    );

    let merged = d.join("merged.jsonl");
    let mut merge: Vec<&std::ffi::OsStr> = vec![
        os("merge"),
        os("--input"),
        input.as_os_str(),
        os("--output"),
        merged.as_os_str(),
    ];
    merge.extend(parts.iter().map(|p| p.as_os_str()));
    let done = run_endorm(&merge);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // The merge is the unsharded run line for line, but for timings and the cache's count.
    let strip = |mut line: Value| {
        line.as_object_mut().unwrap().remove("timings");
        if let Some(usage) = line.get_mut("usage").and_then(Value::as_object_mut) {
            usage.remove("cached_tokens");
        }
        line
    };
    let merged_lines: Vec<Value> = lines(&merged).into_iter().map(strip).collect();
    let whole_lines: Vec<Value> = lines(&whole).into_iter().map(strip).collect();
    assert_eq!(merged_lines, whole_lines);

    // Broken: a line lost from part 1, a line of part 0 twice, a line cut short in part 2.
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let part0 = read(&parts[0]);
    let first_line = part0.lines().next().unwrap().to_owned();
    std::fs::write(&parts[0], format!("{part0}{first_line}\n")).unwrap();
    let part1 = read(&parts[1]);
    let (_, rest) = part1.split_once('\n').unwrap();
    let lost_id =
        serde_json::from_str::<Value>(part1.lines().next().unwrap()).unwrap()["id"].to_string();
    std::fs::write(&parts[1], rest).unwrap();
    let part2 = read(&parts[2]);
    std::fs::write(&parts[2], format!("{part2}{{\"id\": 99, \"res")).unwrap();

    let verified = run_endorm(&verify);
    let report = String::from_utf8_lossy(&verified.stdout);
    assert_eq!(verified.status.code(), Some(1), "{report}");
    let dup_id = serde_json::from_str::<Value>(&first_line).unwrap()["id"].to_string();
    assert!(
        report.contains(&format!("missing: 1 ids: {lost_id}")),
        "{report}"
    );
    assert!(
        report.contains(&format!("duplicate: id {dup_id} on ")),
        "{report}"
    );
    assert!(
        report.contains("bad line: ") && report.contains("cut short"),
        "{report}"
    );
    assert!(report.contains("not complete"), "{report}");

    let refused_output = d.join("refused.jsonl");
    merge[4] = refused_output.as_os_str();
    let refused = run_endorm(&merge);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing written"), "{stderr}");
    assert!(!refused_output.exists());
}
