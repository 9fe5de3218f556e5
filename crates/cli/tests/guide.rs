//! The user guide's recipes (docs/guide.md) run as written: its CMake snippet compiles a model
//! with the `kiln` binary and builds `examples/c/classify.c` against it; `kiln compile --prefix`
//! refuses a name C cannot link.
//!
//! Invariant: the snippet tested is the one in the guide (read from it), so the guide cannot
//! drift from what works. Without `cmake` the CMake check prints a notice and passes, unless
//! `KILN_REQUIRE_CMAKE=1` (set by CI).

use std::path::{Path, PathBuf};
use std::process::Command;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-guide-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first fenced block of `lang` in the guide.
fn guide_block(lang: &str) -> String {
    let guide = std::fs::read_to_string(repo().join("docs/guide.md")).unwrap();
    let start = guide
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("the guide has no {lang} block"))
        + lang.len()
        + 4;
    let len = guide[start..].find("```").unwrap();
    guide[start..start + len].to_string()
}

#[test]
fn the_guides_cmake_snippet_builds_classify_against_a_compiled_model() {
    if Command::new("cmake").arg("--version").output().is_err() {
        let msg = "cmake is not installed (apt-get install cmake): the guide's CMake snippet is not checked";
        assert!(
            std::env::var("KILN_REQUIRE_CMAKE").as_deref() != Ok("1"),
            "{msg}"
        );
        println!("notice: {msg}");
        return;
    }
    let dir = scratch("cmake");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let models = repo().join("tests/models");
    std::fs::copy(models.join("resnet8_cifar.onnx"), src.join("model.onnx")).unwrap();
    std::fs::copy(repo().join("examples/c/classify.c"), src.join("classify.c")).unwrap();
    std::fs::write(
        src.join("CMakeLists.txt"),
        format!(
            "cmake_minimum_required(VERSION 3.16)\nproject(classify C)\n{}",
            guide_block("cmake")
        ),
    )
    .unwrap();
    let build = dir.join("build");
    ok(Command::new("cmake")
        .arg("-S")
        .arg(&src)
        .arg("-B")
        .arg(&build)
        .arg(format!("-DKILN={KILN}")));
    ok(Command::new("cmake").arg("--build").arg(&build));
    let input = dir.join("input.bin");
    let expected_class = raw_input_and_class(&models, &input);
    let printed = ok(Command::new(build.join("classify")).arg(&input));
    assert!(
        printed.starts_with(&format!("class {expected_class} ")),
        "{printed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes resnet8_cifar's test input as raw little-endian floats to `out`; returns its expected
/// output's top class.
fn raw_input_and_class(models: &Path, out: &Path) -> usize {
    let read = |name: &str| {
        kiln::read_tensor(models.join("resnet8_cifar_data").join(name))
            .unwrap()
            .1
    };
    let input = read("input_0.pb");
    let bytes = kiln::tensor_bytes(&input);
    std::fs::write(out, &bytes).unwrap();
    let scores = read("output_0.pb").data().to_f64_vec();
    (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b })
}

#[test]
fn a_prefix_c_cannot_link_is_a_usage_error() {
    let dir = scratch("prefix");
    let out = Command::new(KILN)
        .arg("compile")
        .arg(repo().join("tests/models/dscnn_kws.onnx"))
        .arg("-o")
        .arg(dir.join("lib.so"))
        .args(["--prefix", "8ball"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--prefix") && err.contains("C identifier"),
        "{err}"
    );
    assert!(!dir.join("lib.so").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
