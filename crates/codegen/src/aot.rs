//! Ahead-of-time compilation: kernels, model entries and constant data into one relocatable
//! object file (ELF) for a target ISA, with `cranelift-object`.
//!
//! Invariant: the object holds exactly the code the JIT would run for the same functions and
//! entries (the same [`EmitState`] lowering, position-independent), the constants as read-only
//! data, and one read-only table `constants_symbol` of pointers to them in order, which is the
//! `constants` argument the entries expect. Kernels and outlined bodies are local symbols;
//! entries and the table are hidden globals, for the C wrapper linked beside them. Runtime hooks
//! are undefined imports the wrapper must define (see [`crate::runtime::names`]).

use crate::entry::{self, EntryLayout, ModelEntry};
use crate::isa::{target_isa, HostInfo};
use crate::kernel::EmitState;
use crate::{CodegenError, CodegenOptions, CompileStats};
use cranelift_module::{default_libcall_names, DataDescription, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
use kiln_tir::PrimFunc;

/// A compiled object file.
#[derive(Debug)]
pub struct ObjectCode {
    /// The relocatable object, ready for a linker.
    pub bytes: Vec<u8>,
    /// One layout per entry, in order.
    pub layouts: Vec<EntryLayout>,
    /// What codegen did.
    pub stats: CompileStats,
    /// What codegen knew about the target.
    pub target: HostInfo,
}

/// Alignment of each constant in the object (a cache line: vector loads of weights never split
/// one more than they must).
const CONSTANT_ALIGN: u64 = 64;

fn module_err(what: &str, e: impl std::fmt::Display) -> CodegenError {
    CodegenError::Cranelift {
        func: what.to_string(),
        message: e.to_string(),
    }
}

/// Compiles `funcs`, `entries` and `constants` for `opts.isa` into one object named `name`.
pub fn compile_object(
    name: &str,
    funcs: &[PrimFunc],
    entries: &[ModelEntry],
    constants: &[&[u8]],
    constants_symbol: &str,
    opts: &CodegenOptions,
) -> Result<ObjectCode, CodegenError> {
    let layouts = entry::check_module(funcs, entries, &[constants_symbol])?;
    let isa = target_isa(&opts.isa, true, opts.verify_ir)?;
    let target = HostInfo::of(&*isa);
    let builder = ObjectBuilder::new(isa, name, default_libcall_names())
        .map_err(|e| module_err("<object>", e))?;
    let mut module = ObjectModule::new(builder);

    let stats = {
        let mut em = EmitState::new(&mut module, target, opts.clone());
        em.kernel_linkage = Linkage::Local;
        em.entry_linkage = Linkage::Hidden;
        entry::define_module(&mut em, funcs, entries)?;
        em.stats
    };

    let mut table = DataDescription::new();
    // Explicit zero bytes, not `define_zeroinit`: zero-initialised data goes to .bss, where the
    // pointer relocations written below cannot be applied.
    table.define(vec![0u8; 8 * constants.len().max(1)].into_boxed_slice());
    table.set_align(8);
    for (k, bytes) in constants.iter().enumerate() {
        let sym = format!("{constants_symbol}_{k}");
        let id = module
            .declare_data(&sym, Linkage::Local, false, false)
            .map_err(|e| module_err(&sym, e))?;
        let mut data = DataDescription::new();
        // An empty constant still needs an address distinct from null.
        data.define(if bytes.is_empty() {
            vec![0u8].into_boxed_slice()
        } else {
            bytes.to_vec().into_boxed_slice()
        });
        data.set_align(CONSTANT_ALIGN);
        module
            .define_data(id, &data)
            .map_err(|e| module_err(&sym, e))?;
        let gv = module.declare_data_in_data(id, &mut table);
        table.write_data_addr(8 * k as u32, gv, 0);
    }
    let table_id = module
        .declare_data(constants_symbol, Linkage::Hidden, false, false)
        .map_err(|e| module_err(constants_symbol, e))?;
    module
        .define_data(table_id, &table)
        .map_err(|e| module_err(constants_symbol, e))?;

    let product = module.finish();
    let bytes = product.emit().map_err(|e| module_err("<object>", e))?;
    Ok(ObjectCode {
        bytes,
        layouts,
        stats,
        target,
    })
}
