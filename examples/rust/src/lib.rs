//! The example task module in Rust: the same behaviours as the Python example, under `rs.*`
//! names, built into one component with `celeriac-guest`.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 -p celeriac-example-tasks
//! # → target/wasm32-wasip2/release/celeriac_example_tasks.wasm
//! ```

use std::time::Duration;

use celeriac_guest::serde_json::{Number, Value, json};
use celeriac_guest::{Args, Exception, Kwargs, RetryOptions, Task, TaskError, export_tasks, task};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// A JSON number with Python's arithmetic: int op int stays an int (so `[2, 3]` → `5`, not
/// `5.0`), anything involving a float is a float.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
#[serde(untagged)]
enum Num {
    Int(i64),
    Float(f64),
}

impl<'de> Deserialize<'de> for Num {
    /// Through `serde_json::Number`, so that a non-number is reported as
    /// "invalid type: string "a", expected a JSON number".
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = Number::deserialize(deserializer)?;
        match number.as_i64() {
            Some(int) => Ok(Num::Int(int)),
            None => number
                .as_f64()
                .map(Num::Float)
                .ok_or_else(|| D::Error::custom(format!("{number} is out of range"))),
        }
    }
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// Applies `int_op` to two ints (falling back to floats when it overflows, where Python
    /// would grow a big int), `float_op` otherwise.
    fn combine(
        self,
        other: Num,
        int_op: fn(i64, i64) -> Option<i64>,
        float_op: fn(f64, f64) -> f64,
    ) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => match int_op(a, b) {
                Some(n) => Num::Int(n),
                None => Num::Float(float_op(a as f64, b as f64)),
            },
            (a, b) => Num::Float(float_op(a.as_f64(), b.as_f64())),
        }
    }
}

/// `x + y`.
#[task(name = "rs.add")]
fn add(x: Num, y: Num) -> Num {
    x.combine(y, i64::checked_add, |a, b| a + b)
}

/// `x * y`.
#[task(name = "rs.mul")]
fn mul(x: Num, y: Num) -> Num {
    x.combine(y, i64::checked_mul, |a, b| a * b)
}

/// `sum(numbers)`.
#[task(name = "rs.xsum")]
fn xsum(numbers: Vec<Num>) -> Num {
    numbers.into_iter().fold(Num::Int(0), |acc, n| {
        acc.combine(n, i64::checked_add, |a, b| a + b)
    })
}

/// Returns what it was called with: `{"args": [...], "kwargs": {...}}`.
#[task(name = "rs.echo")]
fn echo(args: Args, kwargs: Kwargs) -> Value {
    json!({ "args": args, "kwargs": kwargs })
}

/// Raises `ValueError(message)`.
#[task(name = "rs.fail")]
fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::value_error(message))
}

/// Sleeps, then returns the number of seconds it was given.
#[task(name = "rs.sleep")]
fn sleep(seconds: Num) -> Result<Num, TaskError> {
    // try_from_secs_f64, because from_secs_f64 panics (and so traps) on negative input.
    let duration = Duration::try_from_secs_f64(seconds.as_f64())
        .map_err(|_| TaskError::value_error("sleep length must be non-negative"))?;
    std::thread::sleep(duration);
    Ok(seconds)
}

/// Never returns: for time-limit tests.
#[task(name = "rs.spin")]
fn spin() -> u64 {
    let mut n: u64 = 0;
    loop {
        // black_box keeps the optimiser from proving the loop pointless and removing it.
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates `megabytes` MB and writes to every page, then returns the number. When the
/// sandbox refuses the memory, raises `MemoryError` as Python would.
#[task(name = "rs.hog")]
fn hog(megabytes: u64) -> Result<u64, TaskError> {
    let bytes = megabytes
        .checked_mul(1024 * 1024)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| {
            TaskError::raise(
                "MemoryError",
                "builtins",
                format!("cannot allocate {megabytes} MB"),
            )
        })?;
    let mut block: Vec<u8> = Vec::new();
    // try_reserve, because a failed `vec![0; n]` aborts (a trap) instead of returning.
    block.try_reserve_exact(bytes).map_err(|_| {
        TaskError::raise(
            "MemoryError",
            "builtins",
            format!("cannot allocate {megabytes} MB"),
        )
    })?;
    block.resize(bytes, 0);
    // Touch one byte per 4 KiB page so the memory is really committed.
    for offset in (0..bytes).step_by(4096) {
        block[offset] = 1;
    }
    std::hint::black_box(&block);
    Ok(megabytes)
}

/// Retries itself (countdown 0.1 s) until `request.retries == n`, then returns `n`. Like the
/// Python example it keeps the default `max_retries` (3), so `n > 3` ends in
/// `MaxRetriesExceededError`.
#[task(name = "rs.retry_until")]
fn retry_until(task: &Task, n: u32) -> Result<u32, TaskError> {
    if task.retries() < n {
        task.info(format!("retry {} of {n}", task.retries() + 1));
        return Err(task.retry_with(RetryOptions {
            countdown: Some(0.1),
            ..RetryOptions::default()
        }));
    }
    Ok(n)
}

/// Reports `PROGRESS` with `{"current": i, "total": steps}` for i = 0..steps (as the Python
/// example's `range(steps)`), then returns `steps`.
#[task(name = "rs.progress")]
fn progress(task: &Task, steps: u32) -> Result<u32, TaskError> {
    for current in 0..steps {
        task.update_state("PROGRESS", json!({ "current": current, "total": steps }))?;
    }
    Ok(steps)
}

/// Returns the text of the file at `path`; I/O errors are raised as Python names them
/// (`FileNotFoundError`, `PermissionError`, …). Only files the task's WASI policy preopens
/// are visible.
#[task(name = "rs.read_file")]
fn read_file(path: String) -> Result<String, TaskError> {
    std::fs::read_to_string(&path)
        .map_err(|err| TaskError::Raised(Exception::from_io(&err, Some(&path))))
}

/// The `n`th Fibonacci number (fib(0) = 0, fib(10) = 55); `OverflowError` past fib(93),
/// the last that fits in a u64.
#[task(name = "rs.fib")]
fn fib(n: u32) -> Result<u64, TaskError> {
    // `b` runs one step ahead and may overflow before `a` does, hence the Options.
    let (mut a, mut b) = (Some(0u64), Some(1u64));
    for _ in 0..n {
        let next = a.zip(b).and_then(|(x, y)| x.checked_add(y));
        a = b;
        b = next;
    }
    a.ok_or_else(|| {
        TaskError::raise(
            "OverflowError",
            "builtins",
            format!("fib({n}) does not fit in 64 bits"),
        )
    })
}

/// A "new style" errback: unbound, with three free positional parameters, so the worker in
/// which a task failed calls it inline with that task's request, exception and traceback
/// (as JSON) instead of sending it; what it prints goes to the worker's log.
#[task(name = "rs.log_error")]
fn log_error(request: Value, exc: Value, traceback: Option<String>) {
    let last_line = traceback
        .as_deref()
        .and_then(|text| text.trim().lines().last())
        .unwrap_or("no traceback");
    println!(
        "Task {} raised {}: {}; traceback ends with: {last_line}",
        request["id"].as_str().unwrap_or("?"),
        exc["exc_type"].as_str().unwrap_or("?"),
        exc["exc_message"],
    );
}

export_tasks!(
    add,
    mul,
    xsum,
    echo,
    fail,
    sleep,
    spin,
    hog,
    retry_until,
    progress,
    read_file,
    fib,
    log_error
);
