//! AOT shared libraries end to end: compiled for x86-64 (host and the x86 targets) and aarch64,
//! loaded from C (`examples/c/run_model.c`, under qemu-user for aarch64) and from Rust
//! (`dlopen`), and compared with each model's expected outputs.
//!
//! Invariant: every library built here is checked against the model's reference outputs; its
//! exported symbols are exactly the documented C ABI and its header compiles as strict C99. The
//! aarch64 checks need `aarch64-linux-gnu-gcc` and `qemu-aarch64`: without them they say so and
//! pass, unless `KILN_REQUIRE_CROSS=1` (set by CI), where their absence fails the test. Models of
//! `../shared/models` are checked too when that folder exists (it does in CI, not in a user's
//! clone).

#![allow(unsafe_code)]

mod c_check;

use c_check::*;
use kiln::{AotOptions, Compiler, DType, Target, TensorType};
use std::path::Path;
use std::process::Command;

#[test]
fn x86_64_libraries_run_from_c_and_match() {
    let dir = scratch("x86");
    let runner = dir.join("run_model");
    build_runner("cc", &runner);
    for c in all_cases() {
        check_through_c(&c, &Target::host(), &runner, &[], &dir);
    }
    // Every x86-64 target the host has the features of runs here (the ISA flags change the
    // code, and the micro-kernels with them); on a host without them a library refuses to
    // create a context, naming the feature, instead of executing an illegal instruction.
    for name in [
        "x86_64-linux-gnu",
        "x86_64-linux-gnu-avx2",
        "x86_64-linux-gnu-avx512",
    ] {
        let target = Target::named(name).unwrap();
        if target.runs_natively() {
            for c in bundled_cases() {
                check_through_c(&c, &target, &runner, &[], &dir);
            }
            continue;
        }
        println!("notice: this machine lacks features of {name}: checking that its libraries refuse to run");
        let c = &bundled_cases()[0];
        let (model, inputs, _) = load(c);
        let lib = dir.join(format!("lib{name}.so"));
        Compiler::new(target)
            .compile_library(&model.graph, &AotOptions::default(), &lib)
            .unwrap();
        let bin = dir.join("in0.bin");
        std::fs::write(&bin, kiln::tensor_bytes(&inputs[0])).unwrap();
        let out = Command::new(&runner)
            .args([&lib, &dir, &bin])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("lacks an instruction set extension"), "{err}");
    }
    // Bad input files are a message and exit status 1, never a crash or a silent run.
    let lib = dir.join("libresnet8_cifar.so");
    let short = dir.join("short.bin");
    std::fs::write(&short, [0u8; 7]).unwrap();
    for (args, expect) in [
        (
            vec![lib.clone(), dir.clone(), short.clone()],
            "expected exactly",
        ),
        (
            vec![lib.clone(), dir.clone()],
            "has 1 inputs, 0 files given",
        ),
        (vec![dir.join("nope.so"), dir.clone(), short], "cannot load"),
    ] {
        let out = Command::new(&runner).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cpu_feature_check_names_the_first_feature_the_cpu_lacks() {
    if !cfg!(target_arch = "x86_64") {
        println!("notice: skipped, the check only exists on x86-64");
        return;
    }
    let dir = scratch("cpucheck");
    // sse2 is in every x86-64; avx512er only in Xeon Phi (never beside AVX-512 on other CPUs).
    for (features, want) in [
        (vec!["sse2"], "none"),
        (vec!["sse2", "avx512er", "sse3"], "avx512er"),
        (vec![], "none"),
    ] {
        let src = format!(
            "#include <stdio.h>\n{}int main(void) {{ const char *m = kiln__missing_cpu_feature(); printf(\"%s|%s\", m ? m : \"none\", KILN__CPU_FEATURES); return 0; }}\n",
            kiln::aot::cpu_check_c(&features)
        );
        let (c, exe) = (dir.join("check.c"), dir.join("check"));
        std::fs::write(&c, src).unwrap();
        let st = Command::new("cc")
            .arg(&c)
            .arg("-o")
            .arg(&exe)
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new(&exe).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (missing, listed) = text.split_once('|').unwrap();
        assert_eq!(listed, features.join(" "));
        if want == "avx512er" && missing == "none" {
            println!("notice: this CPU has avx512er; the negative case is not exercised");
            continue;
        }
        assert_eq!(missing, want, "{features:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn aarch64_libraries_run_under_qemu_and_match() {
    let target = Target::named("aarch64-linux-gnu").unwrap();
    if !cross_tools_or_skip(&target) {
        return;
    }
    let dir = scratch("aarch64");
    let runner = dir.join("run_model");
    build_runner(target.linker(), &runner);
    for c in all_cases() {
        check_through_c(&c, &target, &runner, target.runner(), &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the dot-product extension the int8 kernels use `sdot` (qemu's default CPU has it): the
/// bundled int8 models still match exactly.
#[test]
fn aarch64_dotprod_libraries_run_under_qemu_and_match() {
    let target = Target::named("aarch64-linux-gnu-dotprod").unwrap();
    if !cross_tools_or_skip(&target) {
        return;
    }
    let dir = scratch("aarch64-dotprod");
    let runner = dir.join("run_model");
    build_runner(target.linker(), &runner);
    for c in bundled_cases().iter().filter(|c| c.name.contains("int8")) {
        check_through_c(c, &target, &runner, target.runner(), &dir);
    }
    // The instruction is there (and absent from the baseline target's library).
    if have("aarch64-linux-gnu-objdump") {
        let cases = bundled_cases();
        let c = cases
            .iter()
            .find(|c| c.name == "resnet8_cifar_int8")
            .unwrap();
        let (model, _, _) = load(c);
        for (t, want) in [
            (target, true),
            (Target::named("aarch64-linux-gnu").unwrap(), false),
        ] {
            let lib = dir.join(format!("{}.so", t.name()));
            Compiler::new(t)
                .compile_library(&model.graph, &AotOptions::default(), &lib)
                .unwrap();
            let out = run(Command::new("aarch64-linux-gnu-objdump")
                .arg("-d")
                .arg(&lib));
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(text.contains("sdot"), want, "{}", lib.display());
        }
    } else {
        println!("notice: no aarch64-linux-gnu-objdump; the sdot instructions were not looked for");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_linker_is_an_error_naming_its_package() {
    let text = std::fs::read_to_string(repo().join("targets/aarch64-linux-gnu.toml"))
        .unwrap()
        .replace("aarch64-linux-gnu-gcc\"", "kiln-test-no-such-gcc\"");
    let target = Target::parse(&text, "test.toml").unwrap();
    let c = &bundled_cases()[0];
    let (model, _, _) = load(c);
    let dir = scratch("nolinker");
    let err = Compiler::new(target)
        .compile_library(&model.graph, &AotOptions::default(), &dir.join("x.so"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("kiln-test-no-such-gcc") && msg.contains("apt-get install gcc-aarch64"),
        "{msg}"
    );
    assert!(!dir.join("x.so").exists());
    // A linker that fails leaves neither the library nor a partial file behind.
    let text = text.replace("kiln-test-no-such-gcc\"", "false\"");
    let target = Target::parse(&text, "test.toml").unwrap();
    let err = Compiler::new(target)
        .compile_library(&model.graph, &AotOptions::default(), &dir.join("x.so"))
        .unwrap_err();
    assert!(matches!(err, kiln::AotError::LinkFailed { .. }), "{err}");
    assert!(!dir.join("x.so").exists() && !dir.join("x.so.partial").exists());
}

#[test]
fn only_the_c_abi_is_exported_and_the_header_is_strict_c99() {
    let dir = scratch("abi");
    let c = &bundled_cases()[1];
    let (model, _, _) = load(c);
    let (lib, header) = (dir.join("libm.so"), dir.join("model.h"));
    let options = AotOptions {
        header: Some(header.clone()),
        ..AotOptions::default()
    };
    Compiler::new(Target::host())
        .compile_library(&model.graph, &options, &lib)
        .unwrap();
    let nm = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&lib));
    let mut exported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    exported.sort();
    let mut documented: Vec<String> = kiln::aot::EXPORTED_SYMBOLS
        .iter()
        .map(|s| s.to_string())
        .collect();
    documented.sort();
    assert_eq!(exported, documented);
    let text = std::fs::read_to_string(&header).unwrap();
    assert!(text.contains("#define KILN_MODEL_NUM_INPUTS 1"), "{text}");
    // The header alone, and used by a C file, compiles without a warning.
    let user = dir.join("user.c");
    std::fs::write(
        &user,
        "#include \"model.h\"\nint main(void) { kiln_tensor_info i; (void)i; \
         return KILN_MODEL_NUM_INPUTS == 1 ? 0 : 1; }\n",
    )
    .unwrap();
    run(Command::new("cc")
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-c",
            "-o",
        ])
        .arg(dir.join("user.o"))
        .arg(&user));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The C ABI, called from Rust through `dlopen`.
mod ffi {
    use super::*;
    use std::ffi::{c_char, c_void, CStr};

    #[repr(C)]
    pub struct TensorInfo {
        pub name: *const c_char,
        pub dtype: i32,
        pub rank: i32,
        pub shape: *const i64,
        pub bytes: usize,
    }

    type InfoFn = unsafe extern "C" fn(i32, *mut TensorInfo) -> i32;
    type CreateFn = unsafe extern "C" fn(i32, *mut *mut c_void) -> i32;
    type RunFn = unsafe extern "C" fn(*mut c_void, *const *const c_void, *const *mut c_void) -> i32;
    type DestroyFn = unsafe extern "C" fn(*mut c_void);
    type CountFn = unsafe extern "C" fn() -> i32;

    /// A loaded model library.
    pub struct Library {
        lib: libloading::Library,
    }

    /// One context of a loaded library.
    pub struct Context<'l> {
        lib: &'l Library,
        ptr: *mut c_void,
    }

    impl Library {
        pub fn open(path: &Path) -> Library {
            // SAFETY: loading a library Kiln just built runs no initialisers beyond libc's.
            let lib = unsafe { libloading::Library::new(path) }.unwrap();
            Library { lib }
        }

        fn sym<T: Copy>(&self, name: &str) -> T {
            // SAFETY: each call site names a function of kiln_model.h with its C signature.
            unsafe { *self.lib.get::<T>(name.as_bytes()).unwrap() }
        }

        pub fn count(&self, name: &str) -> i32 {
            // SAFETY: `kiln_model_num_*` take nothing and return an int32_t.
            unsafe { self.sym::<CountFn>(name)() }
        }

        /// `(status, name, dtype, shape, bytes)` of input or output `i`.
        pub fn info(&self, output: bool, i: i32) -> (i32, String, i32, Vec<i64>, usize) {
            let f: InfoFn = self.sym(if output {
                "kiln_model_output_info"
            } else {
                "kiln_model_input_info"
            });
            let mut info = TensorInfo {
                name: std::ptr::null(),
                dtype: -1,
                rank: 0,
                shape: std::ptr::null(),
                bytes: 0,
            };
            // SAFETY: `info` is a valid, writable TensorInfo.
            let s = unsafe { f(i, &mut info) };
            if s != 0 {
                return (s, String::new(), -1, vec![], 0);
            }
            // SAFETY: on success the library filled in a NUL-terminated name and `rank` dims
            // that live as long as the library.
            let (name, shape) = unsafe {
                (
                    CStr::from_ptr(info.name).to_string_lossy().into_owned(),
                    std::slice::from_raw_parts(info.shape, info.rank as usize).to_vec(),
                )
            };
            (s, name, info.dtype, shape, info.bytes)
        }

        pub fn create(&self, threads: i32) -> Context<'_> {
            let f: CreateFn = self.sym("kiln_model_create");
            let mut ptr = std::ptr::null_mut();
            // SAFETY: `ptr` is a valid out-pointer.
            let s = unsafe { f(threads, &mut ptr) };
            assert_eq!(s, 0, "kiln_model_create");
            assert!(!ptr.is_null());
            Context { lib: self, ptr }
        }

        /// `kiln_model_run` with raw pointers (for the argument checks).
        pub fn run_raw(
            &self,
            ctx: *mut c_void,
            inputs: *const *const c_void,
            outputs: *const *mut c_void,
        ) -> i32 {
            let f: RunFn = self.sym("kiln_model_run");
            // SAFETY: callers pass null or arrays of live buffers of the declared sizes.
            unsafe { f(ctx, inputs, outputs) }
        }
    }

    impl Context<'_> {
        /// The context pointer, for calls that must fail before using it.
        pub fn raw(&self) -> *mut c_void {
            self.ptr
        }

        /// Runs on byte buffers sized from the infos; returns the status.
        pub fn run(&mut self, inputs: &[Vec<u8>], outputs: &mut [Vec<u8>]) -> i32 {
            let ins: Vec<*const c_void> = inputs.iter().map(|b| b.as_ptr().cast()).collect();
            let outs: Vec<*mut c_void> =
                outputs.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
            self.lib.run_raw(self.ptr, ins.as_ptr(), outs.as_ptr())
        }
    }

    impl Drop for Context<'_> {
        fn drop(&mut self) {
            let f: DestroyFn = self.lib.sym("kiln_model_destroy");
            // SAFETY: `ptr` came from kiln_model_create and is destroyed once.
            unsafe { f(self.ptr) }
        }
    }
}

fn dtype_code(d: DType) -> i32 {
    DType::ALL.iter().position(|&x| x == d).unwrap() as i32
}

#[test]
fn a_library_loaded_from_rust_matches_and_describes_its_model() {
    let dir = scratch("rust");
    for c in all_cases() {
        let (model, inputs, expected) = load(&c);
        let lib = dir.join(format!("lib{}.so", c.name.replace('/', "_")));
        Compiler::new(Target::host())
            .compile_library(&model.graph, &AotOptions::default(), &lib)
            .unwrap();
        let l = ffi::Library::open(&lib);
        assert_eq!(l.count("kiln_model_num_inputs"), inputs.len() as i32);
        let graph_outputs = model.graph.outputs().len();
        assert_eq!(l.count("kiln_model_num_outputs"), graph_outputs as i32);
        for (i, &v) in model.graph.inputs().iter().enumerate() {
            let (s, name, dtype, shape, bytes) = l.info(false, i as i32);
            let ty: &TensorType = model.graph.ty(v);
            assert_eq!(s, 0);
            assert_eq!(Some(name), model.graph.value(v).name.clone());
            assert_eq!(dtype, dtype_code(ty.dtype));
            assert_eq!(
                shape,
                ty.shape.iter().map(|&d| d as i64).collect::<Vec<_>>()
            );
            assert_eq!(bytes, ty.byte_size());
        }
        assert_eq!(
            l.info(false, inputs.len() as i32).0,
            1,
            "index out of range"
        );
        assert_eq!(l.info(true, -1).0, 1, "index out of range");
        let in_bytes: Vec<Vec<u8>> = inputs.iter().map(kiln::tensor_bytes).collect();
        let mut outs: Vec<Vec<u8>> = model
            .graph
            .outputs()
            .iter()
            .map(|&v| vec![0; model.graph.ty(v).byte_size()])
            .collect();
        for threads in [1, 2, 3] {
            let mut ctx = l.create(threads);
            assert_eq!(ctx.run(&in_bytes, &mut outs), 0);
            let got = onnx_outputs(&c, &model, &outs);
            assert_eq!(got.len(), expected.len(), "{}", c.name);
            for (g, e) in got.iter().zip(&expected) {
                assert_close(&c, &format!("Rust, {threads} threads"), g, e);
            }
        }
        // Null arguments are errors, never crashes.
        let ctx = l.create(1);
        let no_outputs: Vec<*mut std::ffi::c_void> = vec![std::ptr::null_mut(); outs.len()];
        let ins: Vec<*const std::ffi::c_void> =
            in_bytes.iter().map(|b| b.as_ptr().cast()).collect();
        assert_eq!(
            l.run_raw(std::ptr::null_mut(), ins.as_ptr(), no_outputs.as_ptr()),
            1
        );
        assert_eq!(
            l.run_raw(ctx.raw(), std::ptr::null(), no_outputs.as_ptr()),
            1
        );
        assert_eq!(l.run_raw(ctx.raw(), ins.as_ptr(), no_outputs.as_ptr()), 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn four_threads_with_their_own_contexts_get_identical_results() {
    let dir = scratch("threads");
    let c = &bundled_cases()[0];
    let (model, inputs, expected) = load(c);
    let lib = dir.join("libm.so");
    Compiler::new(Target::host())
        .compile_library(&model.graph, &AotOptions::default(), &lib)
        .unwrap();
    let l = ffi::Library::open(&lib);
    let in_bytes: Vec<Vec<u8>> = inputs.iter().map(kiln::tensor_bytes).collect();
    let results: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (l, in_bytes, expected) = (&l, &in_bytes, &expected);
                s.spawn(move || {
                    // Each thread: its own context (1 or 2 pool threads), several runs.
                    let mut ctx = l.create(1 + t % 2);
                    let mut last = vec![];
                    for _ in 0..5 {
                        let mut outs: Vec<Vec<u8>> = expected
                            .iter()
                            .map(|e| vec![0; e.ty().byte_size()])
                            .collect();
                        assert_eq!(ctx.run(in_bytes, &mut outs), 0);
                        if !last.is_empty() {
                            assert_eq!(last, outs, "thread {t}: runs differ");
                        }
                        last = outs;
                    }
                    last
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results[1..] {
        assert_eq!(r, &results[0], "threads disagree");
    }
    let got = kiln::tensor_from_bytes(expected[0].ty(), &results[0][0]).unwrap();
    assert_close(c, "4 threads", &got, &expected[0]);
    let _ = std::fs::remove_dir_all(&dir);
}
