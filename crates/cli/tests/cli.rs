//! End-to-end tests of the `kiln` binary: the bundled models, the malformed-model corpus, argument
//! errors and the conformance runner on a small synthetic suite.
//!
//! Invariant: every test runs the real binary and checks its exit code (0 match, 1 mismatch,
//! 2 error) and what it printed; none depends on timing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> PathBuf {
    repo().join("tests/models")
}

/// The bundled models: (model file, data folder).
fn bundled() -> Vec<(PathBuf, PathBuf)> {
    ["resnet8_cifar", "dscnn_kws", "decoder_block"]
        .iter()
        .map(|m| {
            (
                models().join(format!("{m}.onnx")),
                models().join(format!("{m}_data")),
            )
        })
        .collect()
}

fn kiln<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(KILN)
        .args(args)
        .output()
        .expect("cannot start kiln")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Asserts exit code `code`; on failure shows everything the command printed.
fn expect_code(o: &Output, code: i32, what: &str) -> (String, String) {
    let (out, err) = text(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    );
    (out, err)
}

/// Asserts a clean usage/input error: exit 2, one `error:` line, no panic.
fn expect_error(o: &Output, what: &str) -> String {
    let (_, err) = expect_code(o, 2, what);
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{what}: no `error:` line in stderr:\n{err}"));
    assert!(
        line.len() > "error: ".len() + 3,
        "{what}: empty message: {line}"
    );
    err
}

/// A fresh empty folder under the target dir (removed first if a previous run left it).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bundled_models_run_and_match_their_expected_outputs() {
    for (model, data) in bundled() {
        let o = kiln([
            "run".as_ref(),
            model.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ]);
        let (out, _) = expect_code(&o, 0, &format!("run {}", model.display()));
        assert!(out.contains(": PASS"), "no PASS line:\n{out}");
        assert!(!out.contains("FAIL"), "{out}");
        assert!(out.contains("max abs err"), "{out}");
    }
}

#[test]
fn run_writes_outputs_that_read_back_as_a_match() {
    let (model, data) = &bundled()[0];
    let out_dir = scratch("run_out");
    let o = kiln([
        "run".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        out_dir.as_os_str(),
    ]);
    expect_code(&o, 0, "run --out");
    // A data folder made of the original input and the written output must match exactly.
    let again = scratch("run_out_again");
    fs::copy(data.join("input_0.pb"), again.join("input_0.pb")).unwrap();
    fs::copy(out_dir.join("output_0.pb"), again.join("output_0.pb")).unwrap();
    let o = kiln([
        "run".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        again.as_os_str(),
        "--rtol".as_ref(),
        "0".as_ref(),
        "--atol".as_ref(),
        "0".as_ref(),
    ]);
    let (out, _) = expect_code(&o, 0, "run on written outputs");
    assert!(out.contains("max abs err 0.000e0"), "{out}");
}

#[test]
fn run_without_expected_outputs_exits_zero_and_says_so() {
    let (model, data) = &bundled()[0];
    let dir = scratch("inputs_only");
    fs::copy(data.join("input_0.pb"), dir.join("input_0.pb")).unwrap();
    let o = kiln([
        "run".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        dir.as_os_str(),
    ]);
    let (out, _) = expect_code(&o, 0, "run without outputs");
    assert!(out.contains("no expected value"), "{out}");
}

#[test]
fn run_reports_a_mismatch_with_exit_one() {
    // resnet8's input with dscnn's expected output: a different shape, so a FAIL, not an error.
    let (resnet, resnet_data) = &bundled()[0];
    let (_, dscnn_data) = &bundled()[1];
    let dir = scratch("mismatch");
    fs::copy(resnet_data.join("input_0.pb"), dir.join("input_0.pb")).unwrap();
    fs::copy(dscnn_data.join("output_0.pb"), dir.join("output_0.pb")).unwrap();
    let o = kiln([
        "run".as_ref(),
        resnet.as_os_str(),
        "--data".as_ref(),
        dir.as_os_str(),
    ]);
    let (out, _) = expect_code(&o, 1, "run with wrong expected output");
    assert!(out.contains("FAIL"), "{out}");
}

/// Outputs with a data-dependent number of rows (NonMaxSuppression's) are cut to their count
/// before they are compared, and the note says so.
#[test]
fn data_dependent_rows_are_trimmed_before_comparing() {
    let model = models().join("detection_tail.onnx");
    let data = models().join("detection_tail_data");
    let o = kiln([
        "run".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    let (out, _) = expect_code(&o, 0, "run detection_tail");
    assert!(out.contains("data-dependent number of rows"), "{out}");
    assert!(
        out.contains("`selected` i64[101,3]") && !out.contains("FAIL"),
        "{out}"
    );
}

#[test]
fn inspect_prints_signature_histogram_and_parameters() {
    for (model, _) in bundled() {
        let o = kiln(["inspect".as_ref(), model.as_os_str()]);
        let (out, _) = expect_code(&o, 0, "inspect");
        for key in ["inputs:", "outputs:", "parameters:", "ops (IR):"] {
            assert!(out.contains(key), "no `{key}` in:\n{out}");
        }
        // The CNNs' convolutions or the transformer block's matmuls are in the histogram.
        assert!(out.contains("conv2d") || out.contains("matmul"), "{out}");
        let params: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("parameters: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no parameter count in:\n{out}"));
        assert!(params > 1000, "{params} parameters");
    }
}

#[test]
fn malformed_models_are_refused_cleanly() {
    let dir = repo().join("tests/malformed");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus too small: {files:?}");
    let data = &bundled()[0].1;
    for f in files {
        let o = kiln(["inspect".as_ref(), f.as_os_str()]);
        expect_error(&o, &format!("inspect {}", f.display()));
        let o = kiln([
            "run".as_ref(),
            f.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ]);
        expect_error(&o, &format!("run {}", f.display()));
    }
}

#[test]
fn bad_input_shape_syntax_is_a_usage_error() {
    let model = &bundled()[0].0;
    for bad in ["input", "input=1,x", "=1,2", "input=1,-3"] {
        let o = kiln([
            "inspect".as_ref(),
            model.as_os_str(),
            "--input-shape".as_ref(),
            bad.as_ref(),
        ]);
        let err = expect_error(&o, &format!("--input-shape {bad}"));
        assert!(err.contains("--input-shape"), "{err}");
    }
}

#[test]
fn missing_model_file_is_an_error_naming_it() {
    let o = kiln(["inspect", "no/such/model.onnx"]);
    let err = expect_error(&o, "missing model");
    assert!(err.contains("no/such/model.onnx"), "{err}");
}

#[test]
fn missing_data_folder_is_an_error() {
    let model = &bundled()[0].0;
    let o = kiln([
        "run".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        "no/such/folder".as_ref(),
    ]);
    let err = expect_error(&o, "missing data");
    assert!(err.contains("no/such/folder"), "{err}");
}

#[test]
fn unknown_backend_is_a_usage_error_listing_the_choices() {
    let (model, data) = &bundled()[0];
    let o = kiln([
        "run".as_ref(),
        model.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--backend".as_ref(),
        "tpu".as_ref(),
    ]);
    let err = expect_error(&o, "unknown backend");
    assert!(err.contains("tpu") && err.contains("reference"), "{err}");
}

#[test]
fn no_arguments_is_a_usage_error() {
    let o = kiln(Vec::<&str>::new());
    assert_eq!(o.status.code(), Some(2));
}

/// A suite in the ONNX layout built from the bundled models: one case that passes, one whose
/// expected output is wrong, one whose model is malformed.
fn synthetic_suite(name: &str) -> PathBuf {
    let suite = scratch(name);
    let (resnet, resnet_data) = &bundled()[0];
    let (_, dscnn_data) = &bundled()[1];
    let case = |name: &str, model: &Path, input: &Path, output: &Path| {
        let set = suite.join(name).join("test_data_set_0");
        fs::create_dir_all(&set).unwrap();
        fs::copy(model, suite.join(name).join("model.onnx")).unwrap();
        fs::copy(input, set.join("input_0.pb")).unwrap();
        fs::copy(output, set.join("output_0.pb")).unwrap();
    };
    let input = resnet_data.join("input_0.pb");
    case(
        "test_good",
        resnet,
        &input,
        &resnet_data.join("output_0.pb"),
    );
    case(
        "test_wrong",
        resnet,
        &input,
        &dscnn_data.join("output_0.pb"),
    );
    let broken = repo().join("tests/malformed/unknown_op.onnx");
    case(
        "test_broken",
        &broken,
        &input,
        &resnet_data.join("output_0.pb"),
    );
    suite
}

fn write_manifest(name: &str, text: &str) -> PathBuf {
    let path = scratch(name).join("skip.txt");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn conformance_counts_passes_failures_and_skips() {
    let suite = synthetic_suite("suite1");
    let manifest = write_manifest("manifest_one", "test_wrong # deliberately wrong output\n");
    let o = kiln([
        "conformance".as_ref(),
        suite.as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
    ]);
    let (out, _) = expect_code(&o, 1, "conformance with a failing case");
    assert_eq!(
        out.lines().last(),
        Some("1 passed, 1 failed, 1 skipped"),
        "{out}"
    );
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL test_broken"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(fail.contains("FooBar"), "import error not shown: {fail}");
}

#[test]
fn conformance_passes_when_every_failure_is_listed() {
    let suite = synthetic_suite("suite2");
    let manifest = write_manifest(
        "manifest_all",
        "# comment\ntest_wrong # wrong output\ntest_broken # unknown op\n",
    );
    let o = kiln([
        "conformance".as_ref(),
        suite.as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
        "-v".as_ref(),
    ]);
    let (out, _) = expect_code(&o, 0, "conformance with skips");
    assert!(out.contains("ok   test_good"), "{out}");
    assert_eq!(out.lines().last(), Some("1 passed, 0 failed, 2 skipped"));
    let o = kiln([
        "conformance".as_ref(),
        suite.as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
        "--filter".as_ref(),
        "good".as_ref(),
    ]);
    let (out, _) = expect_code(&o, 0, "conformance --filter");
    assert_eq!(out.lines().last(), Some("1 passed, 0 failed, 0 skipped"));
}

#[test]
fn conformance_rejects_a_manifest_line_without_reason() {
    let suite = synthetic_suite("suite3");
    let manifest = write_manifest("manifest_bad", "test_wrong # ok\ntest_broken\n");
    let o = kiln([
        "conformance".as_ref(),
        suite.as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
    ]);
    let err = expect_error(&o, "manifest without reason");
    assert!(err.contains(":2:") && err.contains("reason"), "{err}");
}

#[test]
fn conformance_on_a_folder_without_cases_is_an_error() {
    let empty = scratch("no_cases");
    let o = kiln(["conformance".as_ref(), empty.as_os_str()]);
    expect_error(&o, "empty suite");
}

#[test]
fn compile_writes_a_library_and_header_and_targets_lists_every_target() {
    let dir = scratch("cli-compile");
    let (model, _) = &bundled()[1];
    let (lib, header) = (dir.join("libkws.so"), dir.join("kws.h"));
    let o = kiln([
        "compile".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        lib.as_os_str(),
        "--header".as_ref(),
        header.as_os_str(),
        "--target".as_ref(),
        "x86_64-linux-gnu-avx2".as_ref(),
    ]);
    let (out, _) = expect_code(&o, 0, "compile");
    assert!(out.contains("x86_64-linux-gnu-avx2"), "{out}");
    assert!(fs::metadata(&lib).unwrap().len() > 1000);
    assert!(fs::read_to_string(&header)
        .unwrap()
        .contains("kiln_model_run"));
    let (out, _) = expect_code(&kiln(["targets"]), 0, "targets");
    for name in [
        "host",
        "x86_64-linux-gnu ",
        "x86_64-linux-gnu-avx2",
        "x86_64-linux-gnu-avx512",
        "aarch64-linux-gnu",
    ] {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
}

#[test]
fn compile_errors_are_clean() {
    let dir = scratch("cli-compile-errors");
    let (model, _) = &bundled()[0];
    let lib = dir.join("lib.so");
    let err = expect_error(
        &kiln([
            "compile".as_ref(),
            model.as_os_str(),
            "-o".as_ref(),
            lib.as_os_str(),
            "--target".as_ref(),
            "sparc-solaris".as_ref(),
        ]),
        "unknown target",
    );
    assert!(err.contains("unknown target `sparc-solaris`"), "{err}");
    let bad = dir.join("bad.toml");
    fs::write(&bad, "name = \"x\"\n").unwrap();
    let err = expect_error(
        &kiln([
            "compile".as_ref(),
            model.as_os_str(),
            "-o".as_ref(),
            lib.as_os_str(),
            "--target".as_ref(),
            bad.as_os_str(),
        ]),
        "bad target file",
    );
    assert!(err.contains("bad.toml"), "{err}");
    expect_error(&kiln(["compile".as_ref(), model.as_os_str()]), "missing -o");
    let missing = dir.join("missing.onnx");
    expect_error(
        &kiln([
            "compile".as_ref(),
            missing.as_os_str(),
            "-o".as_ref(),
            lib.as_os_str(),
        ]),
        "missing model",
    );
    assert!(!lib.exists());
}

/// `list` followed by `path`, as arguments.
fn with_path(list: &[&str], path: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = list.iter().map(Into::into).collect();
    v.push(path.into());
    v
}

#[test]
fn remote_commands_explain_bad_arguments() {
    let dir = scratch("remote_args");
    let info = [
        "rpc",
        "info",
        "--rpc",
        "127.0.0.1:1",
        "--timeout-s",
        "2",
        "--key-file",
    ];
    let short = dir.join("short.key");
    std::fs::write(&short, "too short\n").unwrap();
    let err = expect_error(&kiln(with_path(&info, &short)), "a short key");
    assert!(err.contains("at least 16"), "{err}");
    let err = expect_error(
        &kiln(with_path(&info, &dir.join("absent.key"))),
        "no key file",
    );
    assert!(err.contains("absent.key"), "{err}");
    let key = dir.join("good.key");
    std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
    // Port 1 on loopback: nothing listens there.
    let err = expect_error(&kiln(with_path(&info, &key)), "no agent");
    assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");
    let build = ["agent", "build", "--target", "no-such-target", "-o"];
    let err = expect_error(
        &kiln(with_path(&build, &dir.join("agent"))),
        "an unknown target",
    );
    assert!(err.contains("no-such-target"), "{err}");

    // Tuning and benchmarking on remote devices.
    let model = models().join("dscnn_kws.onnx");
    let log = dir.join("remote.jsonl");
    let tune = |extra: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = vec!["tune".into(), model.clone().into()];
        args.extend(["--trials", "2", "--log"].map(Into::into));
        args.push(log.clone().into());
        args.extend(extra.iter().map(Into::into));
        kiln(args)
    };
    let key_arg = key.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--target", "aarch64-linux-gnu"], "with --rpc or"),
        (&["--rpc", "127.0.0.1:1"], "need --key-file"),
        (
            &["--tracker", "127.0.0.1:1", "--key-file", key_arg],
            "--device-key",
        ),
        (
            &["--rpc", "127.0.0.1:1", "--key-file", key_arg],
            "cannot connect to 127.0.0.1:1",
        ),
        (&["--key-file", key_arg], "--key-file goes with"),
    ];
    for (extra, says) in cases {
        let err = expect_error(&tune(extra), says);
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    let err = expect_error(
        &kiln(with_path(
            &["tracker", "--listen", "127.0.0.1:0", "--key-file"],
            &short,
        )),
        "a tracker with a short key",
    );
    assert!(err.contains("at least 16"), "{err}");
}

/// `kiln rpc bench` against an agent built for this machine on loopback: the library runs
/// there and its outputs equal this machine's run of the same inputs.
#[test]
fn rpc_bench_times_a_model_on_an_agent_and_checks_its_outputs() {
    let dir = scratch("rpc_bench");
    let agent = dir.join("kiln-agent");
    if let Err(e) = kiln_agent::build(&kiln::Target::host(), &agent) {
        assert!(
            std::env::var("KILN_REQUIRE_AGENT").as_deref() != Ok("1"),
            "KILN_REQUIRE_AGENT=1 and the agent does not build: {e}"
        );
        println!("notice: the device agent cannot be built here, this test skips: {e}");
        return;
    }
    let key = dir.join("agent.key");
    fs::write(&key, "a-key-for-the-cli-test-0123456789\n").unwrap();
    let mut child = Command::new(&agent)
        .args(["--listen", "127.0.0.1:0", "--key-file"])
        .arg(&key)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line.split("listening on ").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap();
    let model = models().join("dscnn_kws.onnx");
    let tracker_checks = through_a_tracker(&dir, &agent, &key, &model);
    let args = [
        "rpc",
        "bench",
        "--rpc",
        addr,
        "--repeat",
        "3",
        "--min-repeat-ms",
        "5",
        "--json",
        "--key-file",
    ];
    let mut all = with_path(&args, &key);
    all.push(model.into_os_string());
    let out = kiln(all);
    let _ = child.kill();
    let _ = child.wait();
    let (stdout, _) = expect_code(&out, 0, "rpc bench");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        report["matches_host"],
        serde_json::Value::Bool(true),
        "{report}"
    );
    assert!(report["median_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(
        report["timings_ms"].as_array().unwrap().len(),
        3,
        "{report}"
    );
    tracker_checks.unwrap();
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line `child` prints on stdout.
fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    line
}

/// `kiln tracker` with the agent registered: `kiln rpc status` lists it, `kiln bench
/// --tracker` times the model there (outputs checked against this machine), `kiln tune
/// --tracker` logs measurements made there, and the leases end with the commands.
fn through_a_tracker(dir: &Path, agent: &Path, key: &Path, model: &Path) -> Result<(), String> {
    let mut tracker = Command::new(KILN)
        .args([
            "tracker",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-ms",
            "200",
            "--key-file",
        ])
        .arg(key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = first_line(&mut tracker);
    let _tracker = Killed(tracker);
    let at = line.split("listening on ").nth(1).ok_or(line.clone())?;
    let at = at.split_whitespace().next().unwrap().to_string();
    let mut registered = Command::new(agent)
        .args(["--listen", "127.0.0.1:0", "--key-file"])
        .arg(key)
        .arg("--work-dir")
        .arg(dir.join("work-tracked"))
        .args(["--tracker", &at, "--device-key", "cli"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    first_line(&mut registered);
    let _registered = Killed(registered);
    let status = |what: &str| -> serde_json::Value {
        let out = kiln(with_path(
            &["rpc", "status", "--json", "--tracker", &at, "--key-file"],
            key,
        ));
        let (stdout, _) = expect_code(&out, 0, what);
        serde_json::from_str(stdout.trim()).unwrap()
    };
    let start = std::time::Instant::now();
    while status("status").pointer("/devices/0/device_key") != Some(&"cli".into()) {
        if start.elapsed() > std::time::Duration::from_secs(20) {
            return Err("the agent did not register".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let remote = ["--tracker", &at, "--device-key", "cli", "--key-file"];
    let mut bench: Vec<std::ffi::OsString> = vec!["bench".into(), model.into()];
    bench.extend(["--json", "--iters", "3"].map(Into::into));
    bench.extend(with_path(&remote, key));
    let (stdout, _) = expect_code(&kiln(bench), 0, "bench --tracker");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    if report["matches_host"] != serde_json::Value::Bool(true) {
        return Err(format!("bench --tracker: {report}"));
    }
    let log = dir.join("tracked.jsonl");
    let mut tune: Vec<std::ffi::OsString> = vec!["tune".into(), model.into()];
    tune.extend(["--trials", "3", "--repeat-ms", "1", "--log"].map(Into::into));
    tune.push(log.clone().into());
    tune.extend(with_path(&remote, key));
    let (stdout, _) = expect_code(&kiln(tune), 0, "tune --tracker");
    if !stdout.contains("measuring on 1 device(s)") {
        return Err(format!("tune --tracker: {stdout}"));
    }
    let records = fs::read_to_string(&log).unwrap();
    let measured: Vec<&str> = records
        .lines()
        .filter(|l| l.contains("\"kind\":\"measure\""))
        .collect();
    if measured.len() != 3 || measured.iter().any(|l| !l.contains("\"device\":")) {
        return Err(format!("tune --tracker logged:\n{records}"));
    }
    let mut device: Vec<std::ffi::OsString> = vec!["device".into(), "--json".into()];
    device.extend(with_path(&remote, key));
    let (stdout, _) = expect_code(&kiln(device), 0, "device --tracker");
    let d: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let probes = d["probes"].as_array().map_or(0, Vec::len);
    if d["arch"] != "x86_64" || probes != 6 {
        return Err(format!("device --tracker: {d}"));
    }
    let after = status("status after");
    if after["leases"].as_array().map(Vec::len) != Some(0) {
        return Err(format!("leases left: {after}"));
    }
    Ok(())
}
