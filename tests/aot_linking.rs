//! Programs linked against compiled libraries, as the user guide (docs/guide.md) builds them:
//! `examples/c/classify.c` linked with one model (here, and for aarch64 under qemu-user), and
//! `examples/c/two_models.c` with two (`kiln compile --prefix`), each built by `cc` and by `c++`
//! and found through a pkg-config file like the guide's.
//!
//! Invariant: a library built with a prefix exports exactly [`kiln::aot::EXPORTED_SYMBOLS`]
//! renamed by it, so any number of prefixed libraries link side by side; the headers compile as
//! C99 and C++11 without a warning. The aarch64 check skips with a notice without the cross
//! tools, unless `KILN_REQUIRE_CROSS=1`.

mod c_check;

use c_check::*;
use kiln::{AotOptions, Compiler, Target};
use std::path::Path;
use std::process::Command;

/// The dynamic symbols `lib` defines, sorted.
fn exported(lib: &Path) -> Vec<String> {
    let nm = run(Command::new("nm").args(["-D", "--defined-only"]).arg(lib));
    let mut names: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn two_prefixed_models_link_into_one_c_and_one_cpp_program() {
    let dir = scratch("two-models");
    let cases = bundled_cases();
    let pairs = [("resnet8", &cases[0]), ("kws", &cases[1])];
    assert_eq!(
        (cases[0].name.as_str(), cases[1].name.as_str()),
        ("resnet8_cifar", "dscnn_kws")
    );
    let mut inputs = vec![];
    for (prefix, c) in pairs {
        let (model, ins, _) = load(c);
        let options = AotOptions {
            header: Some(dir.join(format!("{prefix}.h"))),
            prefix: Some(prefix.to_string()),
            ..AotOptions::default()
        };
        let lib = dir.join(format!("lib{prefix}.so"));
        Compiler::new(Target::host())
            .compile_library(&model.graph, &options, &lib)
            .unwrap();
        let mut expected: Vec<String> = kiln::aot::EXPORTED_SYMBOLS
            .iter()
            .map(|s| kiln::aot::exported_name(s, prefix))
            .collect();
        expected.sort();
        assert_eq!(exported(&lib), expected, "{prefix}");
        let bin = dir.join(format!("{prefix}_input.bin"));
        std::fs::write(&bin, kiln::tensor_bytes(&ins[0])).unwrap();
        inputs.push(bin);
    }
    // Each library described by a pkg-config file as the guide writes one.
    for (prefix, _) in pairs {
        std::fs::write(
            dir.join(format!("{prefix}.pc")),
            format!(
                "prefix={}\nlibdir=${{prefix}}\nincludedir=${{prefix}}\n\nName: {prefix}\n\
                 Description: a model compiled by Kiln\nVersion: 1\nCflags: -I${{includedir}}\n\
                 Libs: -L${{libdir}} -l{prefix} -Wl,-rpath,${{libdir}}\n",
                dir.display()
            ),
        )
        .unwrap();
    }
    let link_flags: Vec<String> = if have("pkg-config") {
        let out = run(Command::new("pkg-config")
            .args(["--cflags", "--libs", "resnet8", "kws"])
            .env("PKG_CONFIG_PATH", &dir));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    } else {
        println!("notice: no pkg-config: the guide's .pc files are not checked");
        vec![
            format!("-I{}", dir.display()),
            format!("-L{}", dir.display()),
            "-lresnet8".into(),
            "-lkws".into(),
            format!("-Wl,-rpath,{}", dir.display()),
        ]
    };
    let source = repo().join("examples/c/two_models.c");
    let builds: [(&str, &[&str]); 2] = [
        ("cc", &["-x", "c", "-std=c99", "-pedantic"]),
        ("c++", &["-x", "c++", "-std=c++11", "-pedantic"]),
    ];
    for (compiler, flags) in builds {
        if compiler == "c++" && !have("c++") {
            println!(
                "notice: no C++ compiler (`c++`): the C++ build of the headers is not checked"
            );
            continue;
        }
        let exe = dir.join(format!("two_models_{}", compiler.replace('+', "p")));
        run(Command::new(compiler)
            .args(flags)
            .args(["-Wall", "-Wextra", "-Werror"])
            .arg(&source)
            .args(["-x", "none", "-o"])
            .arg(&exe)
            .args(&link_flags));
        let out_dir = dir.join(format!("out_{}", compiler.replace('+', "p")));
        std::fs::create_dir_all(&out_dir).unwrap();
        run(Command::new(&exe).args([&inputs[0], &inputs[1], &out_dir]));
        for (prefix, c) in pairs {
            let (model, _, expected) = load(c);
            let raw: Vec<Vec<u8>> = (0..model.graph.outputs().len())
                .map(|j| std::fs::read(out_dir.join(format!("{prefix}_output_{j}.bin"))).unwrap())
                .collect();
            let got = onnx_outputs(c, &model, &raw);
            assert_eq!(got.len(), expected.len());
            for (j, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert_close(c, &format!("{compiler} output {j}"), g, e);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The top class `classify` prints for `expected` (its first output's argmax).
fn top_class(expected: &kiln::Tensor) -> usize {
    let v = expected.data().to_f64_vec();
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn the_guides_classify_program_links_one_model_here_and_for_aarch64() {
    let dir = scratch("classify");
    let c = &bundled_cases()[0];
    let (model, inputs, expected) = load(c);
    let input = dir.join("input.bin");
    std::fs::write(&input, kiln::tensor_bytes(&inputs[0])).unwrap();
    let want = format!("class {} ", top_class(&expected[0]));
    for name in ["host", "aarch64-linux-gnu"] {
        let target = Target::named(name).unwrap();
        if !target.runs_natively() && !cross_tools_or_skip(&target) {
            continue;
        }
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap();
        let options = AotOptions {
            header: Some(out.join("model.h")),
            ..AotOptions::default()
        };
        Compiler::new(target.clone())
            .compile_library(&model.graph, &options, &out.join("libmodel.so"))
            .unwrap();
        let compilers: &[&str] = if target.runs_natively() {
            &["cc", "c++"]
        } else {
            &[target.linker()]
        };
        for &compiler in compilers {
            let cpp = compiler == "c++";
            if cpp && !have("c++") {
                println!("notice: no C++ compiler (`c++`): classify.c is not built as C++");
                continue;
            }
            let exe = out.join(if cpp { "classify_cpp" } else { "classify" });
            run(Command::new(compiler)
                .args(if cpp {
                    ["-x", "c++", "-std=c++11"]
                } else {
                    ["-x", "c", "-std=c99"]
                })
                .args(["-pedantic", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(&out)
                .arg(repo().join("examples/c/classify.c"))
                .args(["-x", "none", "-o"])
                .arg(&exe)
                .arg("-L")
                .arg(&out)
                .arg("-lmodel")
                .arg(format!("-Wl,-rpath,{}", out.display())));
            let mut cmd = match target.runner().split_first() {
                Some((program, rest)) => {
                    let mut cmd = Command::new(program);
                    cmd.args(rest).arg(&exe);
                    cmd
                }
                None => Command::new(&exe),
            };
            let printed = run(cmd.arg(&input));
            let text = String::from_utf8_lossy(&printed.stdout);
            assert!(
                text.starts_with(&want),
                "{name} {compiler}: {text}, expected {want}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_prefix_that_is_not_a_c_identifier_is_refused() {
    let c = &bundled_cases()[1];
    let (model, _, _) = load(c);
    let dir = scratch("bad-prefix");
    let options = AotOptions {
        prefix: Some("two-models".into()),
        ..AotOptions::default()
    };
    let err = Compiler::new(Target::host())
        .compile_library(&model.graph, &options, &dir.join("lib.so"))
        .unwrap_err();
    assert!(err.to_string().contains("C identifier"), "{err}");
    assert!(!dir.join("lib.so").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
