//! The loader half of NVTX v3's injection protocol, as the official headers implement it
//! (nvidia-nvtx 13.0.85, nvtx3/nvtxDetail/: nvtxInit.h, nvtxImpl.h, nvtxTypes.h):
//!
//! 1. `NVTX_INJECTION64_PATH` names the tool's shared library (Nsight Systems sets it). The
//!    loader dlopens it and calls its `InitializeInjectionNvtx2` with the loader's
//!    `GetExportTable`.
//! 2. The tool asks for the callbacks export table and calls its `GetModuleFunctionTable` for
//!    each module it handles. A module's table is an array whose entry `id` points at the
//!    loader's slot for callback `id`; the tool writes its own functions into the slots.
//! 3. The entry point returns nonzero on success. On zero the loader unloads the library and
//!    every NVTX call stays a no-op.
//!
//! After that an NVTX call is a call through its slot. Only the core module's RangePushA and
//! RangePop are called here, but every module gets tables of the header's sizes, since a tool
//! may fill the slots of all of them. The header's other ways to find a tool (a statically
//! linked one, Android's package directory) are not needed by a profiler on Linux.

use std::ffi::{CStr, CString, OsStr, c_char, c_int, c_uint, c_void};
use std::mem::transmute;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// nvtxInit.h: the variable holding the tool's path (its name in a 64-bit process).
const INJECTION_PATH_VAR: &str = "NVTX_INJECTION64_PATH";
/// nvtxInit.h: the tool's entry point, of type NvtxInitializeInjectionNvtxFunc_t.
const ENTRY_POINT: &CStr = c"InitializeInjectionNvtx2";

/// nvToolsExt.h: NVTX_VERSION, the API version this loader implements.
const NVTX_VERSION: u32 = 3;

/// nvtxTypes.h, NvtxExportTableID: NVTX_ETID_CALLBACKS and NVTX_ETID_VERSIONINFO.
const ETID_CALLBACKS: u32 = 1;
const ETID_VERSIONINFO: u32 = 3;

/// nvtxTypes.h, NvtxCallbackModule: NVTX_CB_MODULE_CORE, the first of six modules (CORE, CUDA,
/// OPENCL, CUDART, CORE2, SYNC, numbered 1 to 6).
const MODULE_CORE: usize = 1;
/// nvtxTypes.h: each module's NVTX_CBID_<MODULE>_SIZE (one more than its last callback id), in
/// module order. nvtxImpl.h's tables have that many entries plus a trailing null, and its
/// GetModuleFunctionTable reports the size.
const MODULE_SIZES: [usize; 6] = [16, 9, 15, 7, 16, 7];
/// The largest of [`MODULE_SIZES`].
const MAX_SIZE: usize = 16;

/// nvtxTypes.h, NvtxCallbackIdCore: NVTX_CBID_CORE_RangePushA and NVTX_CBID_CORE_RangePop.
const CBID_CORE_RANGE_PUSH_A: usize = 9;
const CBID_CORE_RANGE_POP: usize = 11;

/// nvtxTypes.h: NvtxFunctionTable, a pointer to a module's array of pointers to its slots.
type FunctionTable = *const AtomicPtr<AtomicPtr<c_void>>;
/// nvtxTypes.h: NvtxGetExportTableFunc_t and NvtxInitializeInjectionNvtxFunc_t.
type GetExportTableFn = extern "C" fn(u32) -> *const c_void;
type InitFn = unsafe extern "C" fn(GetExportTableFn) -> c_int;
/// nvtxTypes.h: nvtxRangePushA_impl_fntype and nvtxRangePop_impl_fntype.
type PushFn = unsafe extern "C" fn(*const c_char) -> c_int;
type PopFn = unsafe extern "C" fn() -> c_int;

/// One module's callbacks, laid out as nvtxImpl.h lays out its `functionTable_*` arrays: entry
/// `id` of `table` points at `slots[id]` for ids 1 to size - 1, and entries 0 and `size` stay
/// null (the header's guard against a tool reading past the end). `AtomicPtr` has the layout of
/// a raw pointer, so both are C arrays of pointers.
struct Module {
    table: [AtomicPtr<AtomicPtr<c_void>>; MAX_SIZE + 1],
    slots: [AtomicPtr<c_void>; MAX_SIZE],
}

impl Module {
    const fn empty() -> Module {
        Module {
            table: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_SIZE + 1],
            slots: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_SIZE],
        }
    }
}

/// The six modules' callbacks, module `m` at index `m - 1`.
static MODULES: [Module; 6] = [const { Module::empty() }; 6];

/// nvtxTypes.h, NvtxExportTableCallbacks.
#[repr(C)]
struct Callbacks {
    struct_size: usize,
    get_module_function_table: unsafe extern "C" fn(c_int, *mut FunctionTable, *mut c_uint) -> c_int,
}

/// nvtxTypes.h, NvtxExportTableVersionInfo.
#[repr(C)]
struct VersionInfo {
    struct_size: usize,
    version: u32,
    reserved0: u32,
    set_injection_nvtx_version: extern "C" fn(u32),
}

static CALLBACKS: Callbacks = Callbacks { struct_size: size_of::<Callbacks>(), get_module_function_table };

static VERSION_INFO: VersionInfo = VersionInfo {
    struct_size: size_of::<VersionInfo>(),
    version: NVTX_VERSION,
    reserved0: 0,
    set_injection_nvtx_version,
};

/// nvtxImpl.h's nvtxGetExportTable: the export table `id`, null for ids it does not know.
extern "C" fn get_export_table(id: u32) -> *const c_void {
    match id {
        ETID_CALLBACKS => ptr::from_ref(&CALLBACKS).cast(),
        ETID_VERSIONINFO => ptr::from_ref(&VERSION_INFO).cast(),
        _ => ptr::null(),
    }
}

/// Where a tool reports the NVTX version it implements; the header's loader ignores it too.
extern "C" fn set_injection_nvtx_version(_version: u32) {}

/// nvtxImpl.h's nvtxEtiGetModuleFunctionTable: writes module `module`'s table and its size
/// where the tool asks (either pointer may be null) and returns 1; 0 for an unknown module.
///
/// # Safety
/// `out_table` and `out_size` are null or valid for a write.
unsafe extern "C" fn get_module_function_table(
    module: c_int,
    out_table: *mut FunctionTable,
    out_size: *mut c_uint,
) -> c_int {
    let Some(index) = usize::try_from(module).ok().and_then(|m| m.checked_sub(1)).filter(|&i| i < MODULES.len()) else {
        return 0;
    };
    let (module, size) = (&MODULES[index], MODULE_SIZES[index]);
    for id in 1..size {
        module.table[id].store(ptr::from_ref(&module.slots[id]).cast_mut(), Ordering::Relaxed);
    }
    // SAFETY: the tool passes pointers to its own variables or null (this function's contract).
    unsafe {
        if !out_size.is_null() {
            *out_size = size as c_uint;
        }
        if !out_table.is_null() {
            *out_table = module.table.as_ptr();
        }
    }
    1
}

/// An attached tool's range callbacks.
pub(super) struct Tool {
    push: PushFn,
    pop: PopFn,
}

impl Tool {
    pub(super) fn push(&self, name: &CStr) {
        // SAFETY: the tool's RangePushA, which reads a NUL-terminated string during the call.
        unsafe { (self.push)(name.as_ptr()) };
    }

    pub(super) fn pop(&self) {
        // SAFETY: the tool's RangePop, which takes no arguments.
        unsafe { (self.pop)() };
    }
}

/// The tool `NVTX_INJECTION64_PATH` names, attached; None when the variable is unset or empty,
/// or the tool does not record push/pop ranges. A tool that cannot be loaded or fails to
/// initialise is reported once on stderr and leaves NVTX off: profiling never fails a run.
pub(super) fn attach() -> Option<Tool> {
    let path = std::env::var_os(INJECTION_PATH_VAR).filter(|p| !p.is_empty())?;
    load(&path).unwrap_or_else(|why| {
        eprintln!("warning: NVTX ranges are off: {why}");
        None
    })
}

fn load(path: &OsStr) -> Result<Option<Tool>, String> {
    let shown = Path::new(path).display();
    let c_path = CString::new(path.as_bytes()).map_err(|_| format!("{INJECTION_PATH_VAR} holds a NUL byte"))?;
    // SAFETY: loading runs the library's initialisers: it is the tool the user named in the
    // variable, loaded as the NVTX headers load it (RTLD_LAZY).
    let library = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_LAZY) };
    if library.is_null() {
        return Err(format!("the tool in {INJECTION_PATH_VAR} could not be loaded: {}", dl_error()));
    }
    // SAFETY: a handle dlopen returned, and a NUL-terminated name.
    let entry = unsafe { libc::dlsym(library, ENTRY_POINT.as_ptr()) };
    if entry.is_null() {
        close(library);
        return Err(format!("{shown} ({INJECTION_PATH_VAR}) has no {}", ENTRY_POINT.to_string_lossy()));
    }
    // SAFETY: nvtxTypes.h gives the entry point the type InitFn stands for; a library that
    // exports the symbol with another type is not an NVTX tool, as the header's loader assumes.
    let init = unsafe { transmute::<*mut c_void, InitFn>(entry) };
    // SAFETY: the tool's entry point, called once, with the export-table getter it expects.
    if unsafe { init(get_export_table) } == 0 {
        close(library);
        return Err(format!("the {} of {shown} returned 0", ENTRY_POINT.to_string_lossy()));
    }
    // The library stays loaded for the rest of the process: its functions are in the slots.
    let core = &MODULES[MODULE_CORE - 1];
    let push = core.slots[CBID_CORE_RANGE_PUSH_A].load(Ordering::Acquire);
    let pop = core.slots[CBID_CORE_RANGE_POP].load(Ordering::Acquire);
    if push.is_null() || pop.is_null() {
        return Ok(None);
    }
    // SAFETY: the tool wrote these slots with its RangePushA and RangePop, whose types
    // nvtxTypes.h fixes (PushFn, PopFn).
    let (push, pop) = unsafe { (transmute::<*mut c_void, PushFn>(push), transmute::<*mut c_void, PopFn>(pop)) };
    Ok(Some(Tool { push, pop }))
}

/// Unloads a library whose tool did not attach, as the header's loader does.
fn close(library: *mut c_void) {
    // SAFETY: a handle dlopen returned, closed once; nothing of the library is kept.
    unsafe { libc::dlclose(library) };
}

/// The message of this thread's last failed dl call.
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated message that stays valid until the next
    // dl call on this thread; it is copied at once.
    unsafe {
        let message = libc::dlerror();
        if message.is_null() { "unknown error".into() } else { CStr::from_ptr(message).to_string_lossy().into_owned() }
    }
}
