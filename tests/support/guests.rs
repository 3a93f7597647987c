//! Task components built at test time, from WAT text, for the sandbox and registry tests.
//!
//! This module owns the test guests: every helper writes a core wasm module by hand (WAT),
//! embeds the `task` world of `wit/task.wit` into it with `wit-component`, and returns the
//! bytes of a real component that a host can load like any guest built by a guest SDK. No
//! external tool is involved; a component (about 2 KB) builds in a few milliseconds.
//!
//! The core modules implement the canonical ABI by hand; the [`abi`] module records the
//! layouts they rely on (each one checked by running components in wasmtime 48). In short:
//!
//! * `tasks: func() -> list<task-info>` is the core export `"tasks" (result i32)`: it returns a
//!   pointer to an 8-byte return area holding the list's `(ptr, len)`. Elements are 160 bytes,
//!   8-aligned; an all-zero `task-options` means every option is `none`/`false`/empty.
//! * `run: func(request, args, kwargs) -> result<string, task-error>` flattens to 47 core
//!   parameters, more than the 16 the canonical ABI passes flat, so the core export is
//!   `"run" (param i32) (result i32)`: the host allocates the `(request, string, string)` tuple
//!   (172 bytes, 4-aligned) with `cabi_realloc`, stores it and passes its address; the result
//!   goes into a 104-byte, 8-aligned return area whose address `run` returns.
//! * `cabi_realloc` is a bump allocator that grows memory as needed (and executes
//!   `unreachable` when memory cannot grow); nothing is ever freed, an instance runs one task.
//! * `celeriac:task/context@0.2.0` functions are imported only when the `run` code calls them.
//!   Every component also imports the function-less `celeriac:task/types@0.2.0` interface,
//!   because the world's exports `use` its types; a host linking the world provides both.

#![allow(dead_code)]

use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{Resolve, WorldItem, WorldKey};

/// The contract, exactly as the host reads it.
const TASK_WIT: &str = include_str!("../../wit/task.wit");

/// Canonical ABI facts (wasm32, UTF-8 strings) for the `task` world, as the helpers use them.
/// Offsets are in bytes; a `string` or `list` is stored as `(ptr: u32, len: u32)`, an
/// `option<T>` as a u8 discriminant followed by `T` at `T`'s alignment, a variant (and a
/// `result`) as a u8 discriminant followed by the payload at the largest case alignment.
pub mod abi {
    /// Core import module name of the `context` interface.
    pub const CONTEXT_MODULE: &str = "celeriac:task/context@0.2.0";

    /// Size of the `(request, args, kwargs)` parameter tuple whose address `run` receives.
    pub const RUN_PARAMS_SIZE: u32 = 172;
    /// Alignment of the `run` parameter tuple.
    pub const RUN_PARAMS_ALIGN: u32 = 4;
    /// `request` record: 156 bytes, 4-aligned, at offset 0 of the parameter tuple.
    pub const REQUEST_SIZE: u32 = 156;
    /// `request.id: string`.
    pub const REQUEST_ID: u32 = 0;
    /// `request.task: string`.
    pub const REQUEST_TASK: u32 = 8;
    /// `request.retries: u32`.
    pub const REQUEST_RETRIES: u32 = 16;
    /// `request.root-id: option<string>` (discriminant; the string follows at +4).
    pub const REQUEST_ROOT_ID: u32 = 20;
    /// `request.parent-id: option<string>`.
    pub const REQUEST_PARENT_ID: u32 = 32;
    /// `request.group: option<string>`.
    pub const REQUEST_GROUP: u32 = 44;
    /// `request.group-index: option<u32>` (discriminant; the u32 follows at +4).
    pub const REQUEST_GROUP_INDEX: u32 = 56;
    /// `request.eta: option<string>`.
    pub const REQUEST_ETA: u32 = 64;
    /// `request.expires: option<string>`.
    pub const REQUEST_EXPIRES: u32 = 76;
    /// `request.hostname: string`.
    pub const REQUEST_HOSTNAME: u32 = 88;
    /// `request.origin: option<string>`.
    pub const REQUEST_ORIGIN: u32 = 96;
    /// `request.correlation-id: option<string>`.
    pub const REQUEST_CORRELATION_ID: u32 = 108;
    /// `request.reply-to: option<string>`.
    pub const REQUEST_REPLY_TO: u32 = 120;
    /// `request.delivery-info` record (20 bytes): exchange +0, routing-key +8,
    /// priority `option<u8>` +16 (value at +17), redelivered +18.
    pub const REQUEST_DELIVERY_INFO: u32 = 132;
    /// `request.is-eager: bool`.
    pub const REQUEST_IS_EAGER: u32 = 152;
    /// `request.inline-errback: bool`.
    pub const REQUEST_INLINE_ERRBACK: u32 = 153;
    /// `args: string` in the parameter tuple.
    pub const RUN_ARGS: u32 = 156;
    /// `kwargs: string` in the parameter tuple.
    pub const RUN_KWARGS: u32 = 164;

    /// Size of `run`'s return area, `result<string, task-error>`.
    pub const RUN_RESULT_SIZE: u32 = 104;
    /// Alignment of `run`'s return area (`retry-request` holds an `f64`).
    pub const RUN_RESULT_ALIGN: u32 = 8;
    /// Offset of the `ok` string or the `err` `task-error` in the return area.
    pub const RUN_RESULT_PAYLOAD: u32 = 8;
    /// Offset of the `task-error` case payload in the return area (variant discriminant at 8,
    /// payload at 8 + 8: the `task-error` variant is 96 bytes, 8-aligned).
    pub const TASK_ERROR_PAYLOAD: u32 = 16;
    /// `task-error` case discriminants.
    pub const TASK_ERROR_RAISED: u32 = 0;
    pub const TASK_ERROR_RETRY: u32 = 1;
    pub const TASK_ERROR_REJECT: u32 = 2;
    pub const TASK_ERROR_IGNORE: u32 = 3;
    /// `exception` record (44 bytes, 4-aligned): exc-type +0, exc-module +8, exc-args +16,
    /// message +24, traceback `option<string>` +32.
    pub const EXCEPTION_SIZE: u32 = 44;
    /// `retry-request` record (88 bytes, 8-aligned): countdown `option<f64>` +0 (value +8),
    /// eta `option<string>` +16, max-retries `option<u32>` +28 (value +32),
    /// exc `option<exception>` +36 (exception +40).
    pub const RETRY_REQUEST_SIZE: u32 = 88;
    /// `reject-request` record (16 bytes, 4-aligned): reason `option<string>` +0, requeue +12.
    pub const REJECT_REQUEST_SIZE: u32 = 16;

    /// `task-info` element size in the list `tasks` returns: name, options, then
    /// errback-parameters `option<parameters>` at +128 (28 bytes, 4-aligned).
    pub const TASK_INFO_SIZE: u32 = 160;
    /// `task-info` alignment (`task-options` holds `option<f64>`s).
    pub const TASK_INFO_ALIGN: u32 = 8;
    /// `task-info.options` offset; `task-options` is 120 bytes, 8-aligned.
    pub const TASK_INFO_OPTIONS: u32 = 8;

    /// `log-level` enum values (`log` takes it as an i32).
    pub const LOG_DEBUG: u32 = 0;
    pub const LOG_INFO: u32 = 1;
    pub const LOG_WARNING: u32 = 2;
    pub const LOG_ERROR: u32 = 3;
    pub const LOG_CRITICAL: u32 = 4;
    /// `time-left-ms` result area (`option<u64>`): 16 bytes, 8-aligned, value at +8.
    pub const TIME_LEFT_SIZE: u32 = 16;
}

/// A guest that serves `names` and, on `run`, executes `body_wat` and then returns
/// `Ok(result_json)`.
///
/// `body_wat` is a stack-neutral sequence of WAT instructions placed at the start of the core
/// `run` function. It may use:
/// * `(local.get $params)`: the address of the `(request, args, kwargs)` tuple (see [`abi`]);
/// * the scratch locals `$tmp`, `$ptr`, `$len` (i32) and `$tmp64` (i64);
/// * `(call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const ALIGN) (i32.const SIZE))`;
/// * the context imports, declared only when referenced: `$ctx_log (param level ptr len)`,
///   `$ctx_update_state (param state_ptr state_len meta_ptr meta_len)` and
///   `$ctx_time_left_ms (param result_area)` (a 16-byte `option<u64>`, see [`abi`]);
/// * `(return (i32.const <area>))` only with a return area it wrote itself.
pub fn guest_component(names: &[&str], body_wat: &str, result_json: &str) -> Vec<u8> {
    let mut guest = CoreGuest::new(names);
    let (ptr, len) = guest.string(result_json);
    let ok = guest.return_ok(&konst(ptr), &konst(len));
    guest.finish(&format!("{body_wat}\n{ok}"))
}

/// Returns `Ok(result_json)`.
pub fn ok_guest(name: &str, result_json: &str) -> Vec<u8> {
    guest_component(&[name], "", result_json)
}

/// Returns the `args` string it was given, verbatim.
pub fn echo_args_guest(name: &str) -> Vec<u8> {
    let guest = CoreGuest::new(&[name]);
    let ok = guest.return_ok(&param_load(abi::RUN_ARGS), &param_load(abi::RUN_ARGS + 4));
    guest.finish(&ok)
}

/// Returns the `kwargs` string it was given, verbatim.
pub fn echo_kwargs_guest(name: &str) -> Vec<u8> {
    let guest = CoreGuest::new(&[name]);
    let ok = guest.return_ok(
        &param_load(abi::RUN_KWARGS),
        &param_load(abi::RUN_KWARGS + 4),
    );
    guest.finish(&ok)
}

/// Spins forever in `(loop br 0)`: only epoch interruption (or fuel) stops it.
pub fn infinite_loop_guest(name: &str) -> Vec<u8> {
    guest_component(&[name], "(loop $spin (br $spin))", "null")
}

/// Grows its memory one page at a time until `memory.grow` fails, then executes `unreachable`.
/// Without a memory limit it stops at the 4 GiB of wasm32.
pub fn memory_bomb_guest(name: &str) -> Vec<u8> {
    let body = r#"
        (block $refused
          (loop $grow
            (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
            (br $grow)))
        unreachable"#;
    guest_component(&[name], body, "null")
}

/// Executes `unreachable` (`Trap::UnreachableCodeReached`).
pub fn trap_guest(name: &str) -> Vec<u8> {
    guest_component(&[name], "unreachable", "null")
}

/// Counts to `iterations` in a loop (about a nanosecond each), then returns `Ok(result_json)`:
/// a task that stays busy for a while without any host call.
pub fn spinning_guest(name: &str, iterations: u64, result_json: &str) -> Vec<u8> {
    guest_component(&[name], &spin_wat(iterations), result_json)
}

fn spin_wat(iterations: u64) -> String {
    format!(
        r#"
        (local.set $tmp64 (i64.const 0))
        (loop $count
          (local.set $tmp64 (i64.add (local.get $tmp64) (i64.const 1)))
          (br_if $count (i64.lt_u (local.get $tmp64) (i64.const {iterations}))))"#
    )
}

/// Logs one line, then spins like [`spinning_guest`] and returns `Ok("null")`. Lowering the
/// `log` import makes wit-component add two core modules (a shim and its fixup), so each
/// instance of this component holds three core instances.
pub fn logging_spinning_guest(name: &str, iterations: u64) -> Vec<u8> {
    let mut guest = CoreGuest::new(&[name]);
    let (msg_ptr, msg_len) = guest.string("spinning");
    let (null_ptr, null_len) = guest.string("null");
    let body = format!(
        r#"
        (call $ctx_log (i32.const {info}) (i32.const {msg_ptr}) (i32.const {msg_len}))
        {spin}
        {ok}"#,
        info = abi::LOG_INFO,
        spin = spin_wat(iterations),
        ok = guest.return_ok(&konst(null_ptr), &konst(null_len)),
    );
    guest.finish(&body)
}

/// `component` with a top-level `version` custom section holding `version`, the way
/// `wasm-tools metadata add --version` declares it. Custom sections may follow any section,
/// so appending one keeps the component valid.
pub fn with_declared_version(component: &[u8], version: &str) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128("version".len(), &mut body);
    body.extend_from_slice(b"version");
    body.extend_from_slice(version.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb128(body.len(), &mut out);
    out.extend(body);
    out
}

/// Recurses without a bound until the wasm stack overflows (`Trap::StackOverflow`).
pub fn deep_recursion_guest(name: &str) -> Vec<u8> {
    let mut guest = CoreGuest::new(&[name]);
    // Not a tail call: the addition after the call keeps every frame alive.
    guest.funcs.push_str(
        r#"
  (func $recurse (param $depth i32) (result i32)
    (i32.add
      (call $recurse (i32.add (local.get $depth) (i32.const 1)))
      (i32.const 1)))"#,
    );
    let (ptr, len) = guest.string("null");
    let ok = guest.return_ok(&konst(ptr), &konst(len));
    guest.finish(&format!("(drop (call $recurse (i32.const 0)))\n{ok}"))
}

/// Returns a JSON string literal whose text is exactly `bytes` bytes long: `"xx…x"` (a quote,
/// `bytes - 2` times `x`, a quote). The text is allocated with `cabi_realloc` at run time, so
/// the component stays small; a memory limit below `bytes` makes the guest trap.
pub fn big_result_guest(name: &str, bytes: usize) -> Vec<u8> {
    assert!(
        bytes >= 2,
        "a JSON string literal is at least 2 bytes (\"\")"
    );
    let len = u32::try_from(bytes).expect("big_result_guest: bytes must fit in wasm32 memory");
    let guest = CoreGuest::new(&[name]);
    let body = format!(
        r#"
        (local.set $ptr (call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.const {len})))
        (i32.store8 (local.get $ptr) (i32.const 34))
        (memory.fill (i32.add (local.get $ptr) (i32.const 1)) (i32.const 120) (i32.const {inner}))
        (i32.store8 (i32.add (local.get $ptr) (i32.const {last})) (i32.const 34))
        {ok}"#,
        inner = len - 2,
        last = len - 1,
        ok = guest.return_ok("(local.get $ptr)", &konst(len)),
    );
    guest.finish(&body)
}

/// Returns `Err(task-error::raised(exception))` with the given type and module,
/// `exc-args = [message]` (JSON), `message = message` and no traceback.
pub fn raising_guest(name: &str, exc_type: &str, exc_module: &str, message: &str) -> Vec<u8> {
    let exc_args = serde_json::to_string(&[message]).expect("a string array serializes to JSON");
    let mut guest = CoreGuest::new(&[name]);
    let exc_type = guest.string(exc_type);
    let exc_module = guest.string(exc_module);
    let exc_args = guest.string(&exc_args);
    let message = guest.string(message);
    let ret = guest.run_ret;
    let exc = abi::TASK_ERROR_PAYLOAD;
    let body = format!(
        r#"
        (i32.store8 (i32.const {ret}) (i32.const 1))
        (i32.store8 offset={disc} (i32.const {ret}) (i32.const {raised}))
        {exc_type}
        {exc_module}
        {exc_args}
        {message}
        (i32.store8 offset={traceback} (i32.const {ret}) (i32.const 0))
        (i32.const {ret})"#,
        disc = abi::RUN_RESULT_PAYLOAD,
        raised = abi::TASK_ERROR_RAISED,
        exc_type = store_string(ret, exc, exc_type),
        exc_module = store_string(ret, exc + 8, exc_module),
        exc_args = store_string(ret, exc + 16, exc_args),
        message = store_string(ret, exc + 24, message),
        traceback = exc + 32,
    );
    guest.finish(&body)
}

/// Returns `Err(task-error::retry(retry-request))` with the given countdown and max-retries,
/// no eta and no exception.
pub fn retrying_guest(name: &str, countdown: Option<f64>, max_retries: Option<u32>) -> Vec<u8> {
    let guest = CoreGuest::new(&[name]);
    let ret = guest.run_ret;
    let req = abi::TASK_ERROR_PAYLOAD;
    let countdown = match countdown {
        Some(seconds) => format!(
            "(i32.store8 offset={req} (i32.const {ret}) (i32.const 1))
             (f64.store offset={value} (i32.const {ret}) (f64.const {seconds}))",
            value = req + 8,
            // `{:?}` keeps a decimal point or exponent (`2.0`, `1e300`, `inf`); WAT spells NaN `nan`.
            seconds = if seconds.is_nan() {
                "nan".to_string()
            } else {
                format!("{seconds:?}")
            },
        ),
        None => format!("(i32.store8 offset={req} (i32.const {ret}) (i32.const 0))"),
    };
    let max_retries = match max_retries {
        Some(n) => format!(
            "(i32.store8 offset={disc} (i32.const {ret}) (i32.const 1))
             (i32.store offset={value} (i32.const {ret}) (i32.const {n}))",
            disc = req + 28,
            value = req + 32,
        ),
        None => format!(
            "(i32.store8 offset={disc} (i32.const {ret}) (i32.const 0))",
            disc = req + 28
        ),
    };
    let body = format!(
        r#"
        (i32.store8 (i32.const {ret}) (i32.const 1))
        (i32.store8 offset={disc} (i32.const {ret}) (i32.const {retry}))
        {countdown}
        (i32.store8 offset={eta} (i32.const {ret}) (i32.const 0))
        {max_retries}
        (i32.store8 offset={exc} (i32.const {ret}) (i32.const 0))
        (i32.const {ret})"#,
        disc = abi::RUN_RESULT_PAYLOAD,
        retry = abi::TASK_ERROR_RETRY,
        eta = req + 16,
        exc = req + 36,
    );
    guest.finish(&body)
}

/// Returns `Err(task-error::reject(reject-request))` with `reason` and `requeue`.
pub fn rejecting_guest(name: &str, reason: Option<&str>, requeue: bool) -> Vec<u8> {
    let mut guest = CoreGuest::new(&[name]);
    let ret = guest.run_ret;
    let req = abi::TASK_ERROR_PAYLOAD;
    let reason = match reason {
        Some(reason) => {
            let reason = guest.string(reason);
            format!(
                "(i32.store8 offset={req} (i32.const {ret}) (i32.const 1))\n{}",
                store_string(ret, req + 4, reason)
            )
        }
        None => format!("(i32.store8 offset={req} (i32.const {ret}) (i32.const 0))"),
    };
    let body = format!(
        r#"
        (i32.store8 (i32.const {ret}) (i32.const 1))
        (i32.store8 offset={disc} (i32.const {ret}) (i32.const {reject}))
        {reason}
        (i32.store8 offset={requeue_at} (i32.const {ret}) (i32.const {requeue}))
        (i32.const {ret})"#,
        disc = abi::RUN_RESULT_PAYLOAD,
        reject = abi::TASK_ERROR_REJECT,
        requeue_at = req + 12,
        requeue = u32::from(requeue),
    );
    guest.finish(&body)
}

/// Returns `Err(task-error::ignore)`.
pub fn ignoring_guest(name: &str) -> Vec<u8> {
    let guest = CoreGuest::new(&[name]);
    let ret = guest.run_ret;
    let body = format!(
        r#"
        (i32.store8 (i32.const {ret}) (i32.const 1))
        (i32.store8 offset={disc} (i32.const {ret}) (i32.const {ignore}))
        (i32.const {ret})"#,
        disc = abi::RUN_RESULT_PAYLOAD,
        ignore = abi::TASK_ERROR_IGNORE,
    );
    guest.finish(&body)
}

/// Calls `context.log(info, message)`, then `context.update-state("PROGRESS", "{\"n\":1}")`,
/// then returns `Ok("null")`.
pub fn logging_guest(name: &str, message: &str) -> Vec<u8> {
    let mut guest = CoreGuest::new(&[name]);
    let (msg_ptr, msg_len) = guest.string(message);
    let (state_ptr, state_len) = guest.string("PROGRESS");
    let (meta_ptr, meta_len) = guest.string(r#"{"n":1}"#);
    let (null_ptr, null_len) = guest.string("null");
    let body = format!(
        r#"
        (call $ctx_log (i32.const {info}) (i32.const {msg_ptr}) (i32.const {msg_len}))
        (call $ctx_update_state
          (i32.const {state_ptr}) (i32.const {state_len})
          (i32.const {meta_ptr}) (i32.const {meta_len}))
        {ok}"#,
        info = abi::LOG_INFO,
        ok = guest.return_ok(&konst(null_ptr), &konst(null_len)),
    );
    guest.finish(&body)
}

/// Calls `context.time-left-ms()` and returns its answer as JSON: `null` for `none`, else the
/// number of milliseconds.
pub fn time_left_guest(name: &str) -> Vec<u8> {
    let mut guest = CoreGuest::new(&[name]);
    let (null_ptr, null_len) = guest.string("null");
    let body = format!(
        r#"
        (local.set $tmp (call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const 8) (i32.const {area})))
        (call $ctx_time_left_ms (local.get $tmp))
        (if (i32.eqz (i32.load8_u (local.get $tmp)))
          (then (return {null})))
        (local.set $tmp64 (i64.load offset=8 (local.get $tmp)))
        ;; Decimal digits, written backwards from the end of a 20-byte buffer (u64::MAX has 20).
        (local.set $len (i32.add (call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 20)) (i32.const 20)))
        (local.set $ptr (local.get $len))
        (loop $digit
          (local.set $ptr (i32.sub (local.get $ptr) (i32.const 1)))
          (i64.store8 (local.get $ptr) (i64.add (i64.rem_u (local.get $tmp64) (i64.const 10)) (i64.const 48)))
          (local.set $tmp64 (i64.div_u (local.get $tmp64) (i64.const 10)))
          (br_if $digit (i64.ne (local.get $tmp64) (i64.const 0))))
        {number}"#,
        area = abi::TIME_LEFT_SIZE,
        null = wrap_block(&guest.return_ok(&konst(null_ptr), &konst(null_len))),
        number = guest.return_ok(
            "(local.get $ptr)",
            "(i32.sub (local.get $len) (local.get $ptr))"
        ),
    );
    guest.finish(&body)
}

/// A valid component that does NOT satisfy the `task` world: it exports `tasks` (serving
/// `tasks.missing_run`) but no `run`. For registry validation tests.
pub fn missing_export_component() -> Vec<u8> {
    let guest = CoreGuest::new(&["tasks.missing_run"]);
    let core = guest.core_module_wat(None);
    encode(&core, Some("run"))
}

/// Turns a hand-written core module (WAT) that implements the `task` world into a component.
/// The module must export `memory`, `cabi_realloc`, `tasks` and `run` with the core
/// signatures described in the module docs, and import from [`abi::CONTEXT_MODULE`] only
/// `log`, `update-state` and `time-left-ms`.
pub fn component_from_core_wat(core_wat: &str) -> Vec<u8> {
    encode(core_wat, None)
}

// ---------------------------------------------------------------------------------------------

/// Where the static data starts; address 0..16 stays unused so that a zero pointer is never
/// a valid datum.
const DATA_BASE: u32 = 16;
const PAGE: u32 = 65536;

/// A core module under construction: static data laid out at fixed addresses, the `tasks`
/// answer, and `run`'s return area.
struct CoreGuest {
    data: Vec<u8>,
    /// `run`'s return area (`abi::RUN_RESULT_SIZE` bytes, 8-aligned), static.
    run_ret: u32,
    /// `tasks`' return area: `(list ptr, list len)`, static and prefilled.
    tasks_ret: u32,
    /// Extra functions appended to the module.
    funcs: String,
}

impl CoreGuest {
    fn new(names: &[&str]) -> Self {
        let mut guest = CoreGuest {
            data: Vec::new(),
            run_ret: 0,
            tasks_ret: 0,
            funcs: String::new(),
        };
        let names: Vec<(u32, u32)> = names.iter().map(|name| guest.string(name)).collect();
        // task-info list: name at +0, then options and errback parameters, all zero (every
        // option none/false/empty, no errback parameters).
        let mut infos = vec![0u8; names.len() * abi::TASK_INFO_SIZE as usize];
        for (i, &(ptr, len)) in names.iter().enumerate() {
            let at = i * abi::TASK_INFO_SIZE as usize;
            infos[at..at + 4].copy_from_slice(&ptr.to_le_bytes());
            infos[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        }
        let list = guest.push(&infos, abi::TASK_INFO_ALIGN);
        let count = u32::try_from(names.len()).expect("a handful of task names");
        let mut tasks_ret = list.to_le_bytes().to_vec();
        tasks_ret.extend_from_slice(&count.to_le_bytes());
        guest.tasks_ret = guest.push(&tasks_ret, 4);
        guest.run_ret = guest.push(&[0; abi::RUN_RESULT_SIZE as usize], abi::RUN_RESULT_ALIGN);
        guest
    }

    /// Places `bytes` in the static data at `align` and returns their address.
    fn push(&mut self, bytes: &[u8], align: u32) -> u32 {
        while !(DATA_BASE as usize + self.data.len()).is_multiple_of(align as usize) {
            self.data.push(0);
        }
        let at = DATA_BASE as usize + self.data.len();
        self.data.extend_from_slice(bytes);
        u32::try_from(at).expect("static data fits in wasm32 memory")
    }

    /// Places a UTF-8 string in the static data; returns `(ptr, len)`.
    fn string(&mut self, text: &str) -> (u32, u32) {
        let ptr = self.push(text.as_bytes(), 1);
        (
            ptr,
            u32::try_from(text.len()).expect("static strings fit in wasm32 memory"),
        )
    }

    /// Instructions that write `Ok(string)` into the return area and leave its address.
    fn return_ok(&self, ptr: &str, len: &str) -> String {
        let ret = self.run_ret;
        format!(
            "(i32.store8 (i32.const {ret}) (i32.const 0))
             (i32.store offset={p} (i32.const {ret}) {ptr})
             (i32.store offset={l} (i32.const {ret}) {len})
             (i32.const {ret})",
            p = abi::RUN_RESULT_PAYLOAD,
            l = abi::RUN_RESULT_PAYLOAD + 4,
        )
    }

    /// The core module; `run_body` leaves the return-area address on the stack (`None`: the
    /// module has no `run`).
    fn core_module_wat(&self, run_body: Option<&str>) -> String {
        let code = format!("{}\n{}", run_body.unwrap_or(""), self.funcs);
        let mut imports = String::new();
        let context = abi::CONTEXT_MODULE;
        for (symbol, field, params) in [
            ("$ctx_log", "log", "i32 i32 i32"),
            ("$ctx_update_state", "update-state", "i32 i32 i32 i32"),
            ("$ctx_time_left_ms", "time-left-ms", "i32"),
        ] {
            if mentions(&code, symbol) {
                imports.push_str(&format!(
                    "  (import \"{context}\" \"{field}\" (func {symbol} (param {params})))\n"
                ));
            }
        }
        let heap_start = (DATA_BASE + self.data.len() as u32).next_multiple_of(16);
        // The static data plus one free page for the heap; cabi_realloc grows the rest.
        let pages = heap_start.div_ceil(PAGE) + 1;
        let run = match run_body {
            Some(body) => format!(
                r#"
  (func $run (export "run") (param $params i32) (result i32)
    (local $tmp i32) (local $ptr i32) (local $len i32) (local $tmp64 i64)
    {body})"#
            ),
            None => String::new(),
        };
        format!(
            r#"(module
{imports}
  (memory (export "memory") {pages})
  (global $heap (mut i32) (i32.const {heap_start}))
  (data (i32.const {DATA_BASE}) "{data}")

  ;; Bump allocator: never frees; grows memory on demand; traps when memory cannot grow.
  (func $cabi_realloc (export "cabi_realloc")
    (param $old_ptr i32) (param $old_size i32) (param $align i32) (param $new_size i32)
    (result i32)
    (local $ptr i32) (local $end i64) (local $have i64)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $new_size))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u
                    (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                    (i64.const 16))))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (if (local.get $old_size)
      (then
        (memory.copy (local.get $ptr) (local.get $old_ptr)
          (select (local.get $old_size) (local.get $new_size)
            (i32.lt_u (local.get $old_size) (local.get $new_size))))))
    (local.get $ptr))

  (func (export "tasks") (result i32)
    (i32.const {tasks_ret}))
{run}
{funcs}
)
"#,
            data = wat_bytes(&self.data),
            tasks_ret = self.tasks_ret,
            funcs = self.funcs,
        )
    }

    fn finish(&self, run_body: &str) -> Vec<u8> {
        encode(&self.core_module_wat(Some(run_body)), None)
    }
}

/// Embeds the `task` world (minus `drop_export`, if given) into the core module and encodes
/// the component, validating it.
fn encode(core_wat: &str, drop_export: Option<&str>) -> Vec<u8> {
    let mut resolve = Resolve::default();
    let package = resolve
        .push_str("wit/task.wit", TASK_WIT)
        .expect("wit/task.wit parses");
    let world = resolve
        .select_world(&[package], Some("task"))
        .expect("wit/task.wit has world `task`");
    if let Some(name) = drop_export {
        let exports = &mut resolve.worlds[world].exports;
        let before = exports.len();
        exports.retain(|key, item| {
            !(matches!(item, WorldItem::Function(_))
                && matches!(key, WorldKey::Name(n) if n == name))
        });
        assert_eq!(
            exports.len() + 1,
            before,
            "world `task` exports a function `{name}`"
        );
    }
    let mut module = wat::parse_str(core_wat)
        .unwrap_or_else(|e| panic!("test guest core module does not parse: {e}\n{core_wat}"));
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .expect("the task world embeds into the core module");
    ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|mut encoder| encoder.encode())
        .unwrap_or_else(|e| {
            panic!("test guest does not encode as a task component: {e:?}\n{core_wat}")
        })
}

/// Whether `code` refers to the WAT identifier `symbol` (not merely a longer one).
fn mentions(code: &str, symbol: &str) -> bool {
    code.match_indices(symbol).any(|(at, _)| {
        code[at + symbol.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || "_.+-*/\\^~=<>!?@#$%&|:'`".contains(c)))
    })
}

fn konst(value: u32) -> String {
    format!("(i32.const {value})")
}

/// `(i32.load offset=N (local.get $params))`.
fn param_load(offset: u32) -> String {
    format!("(i32.load offset={offset} (local.get $params))")
}

/// Stores a `(ptr, len)` string at `base + offset`.
fn store_string(base: u32, offset: u32, (ptr, len): (u32, u32)) -> String {
    format!(
        "(i32.store offset={offset} (i32.const {base}) (i32.const {ptr}))
         (i32.store offset={len_at} (i32.const {base}) (i32.const {len}))",
        len_at = offset + 4,
    )
}

/// Instructions leaving one i32, as a single folded expression.
fn wrap_block(instructions: &str) -> String {
    format!("(block (result i32) {instructions})")
}

/// Bytes as the contents of a WAT string literal.
fn wat_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\{b:02x}"));
        }
    }
    out
}
