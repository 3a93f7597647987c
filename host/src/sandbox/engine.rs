//! The one wasmtime `Engine` of a worker: pooling allocator, epoch interruption, and the
//! thread that advances the epoch.

use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig,
};

/// Engine settings, fixed for the life of a worker (compiled artifacts depend on them).
///
/// # Defaults
///
/// * pooling allocator with room for 1,000 component instances at once;
/// * `keep_resident_bytes`: 16 MiB of each linear memory stay resident between instances;
/// * epoch tick: 5 ms, the granularity of time limits and of yielding to other tasks.
///
/// # Epochs, not fuel
///
/// Time limits are wall-clock limits, as in Celery, so they use epoch interruption: the
/// guest checks a counter at loop heads and function entries, which costs about 2% here.
/// Every tick the guest also yields to tokio, so a busy guest never pins a runtime thread.
/// A malicious guest cannot escape an epoch check; it can only make each check a tick late.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Component instances that can exist at once: running tasks, idle `reuse` instances
    /// and a component being loaded. Each may hold up to 64 core instances, 2 memories and
    /// 8 tables (`CORE_INSTANCES_PER_COMPONENT` and its siblings); a component that needs
    /// more is refused when it is loaded, so the pool always has room for this many
    /// instances of any component. Each memory slot reserves about 4 GiB of address space
    /// (not memory): 8 GiB per instance.
    pub max_instances: u32,
    /// Bytes of each linear memory kept resident when a pool slot is reused: the pages a
    /// task dirtied are reset by copying from the component's image instead of being
    /// returned to the kernel with `madvise`. Measured here, it halves the per-task cost of
    /// small guests (Rust 30 → 12.5 µs); the price is up to this much resident memory per
    /// pool slot that has been used (only pages a task touched count). 0 turns it off.
    pub keep_resident_bytes: usize,
    /// How often the epoch advances.
    pub epoch_tick: Duration,
}

/// Core instances one component instance may hold. componentize-py's Python components
/// hold 14 (CPython's libraries are linked as separate modules), Rust ones 3.
const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Linear memories one component instance may hold (guests built by one toolchain have 1).
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables one component instance may hold (Python and Rust components have 2).
const TABLES_PER_COMPONENT: u32 = 8;

impl EngineOptions {
    /// The default pool size: enough for any concurrency below ~500.
    pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_instances: Self::DEFAULT_MAX_INSTANCES,
            keep_resident_bytes: 16 << 20,
            epoch_tick: Duration::from_millis(5),
        }
    }
}

pub(crate) fn build_engine(options: &EngineOptions) -> wasmtime::Result<Engine> {
    let instances = options.max_instances;
    let mut pooling = PoolingAllocationConfig::default();
    // Sized per component instance: wasmtime's defaults (1,000 of each) let 1,000 core
    // instances run out after 71 Python instances.
    pooling
        .total_component_instances(instances)
        .total_stacks(instances)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .linear_memory_keep_resident(options.keep_resident_bytes)
        .table_keep_resident(options.keep_resident_bytes)
        // With PAGEMAP_SCAN (Linux 6.7+) only the pages a task dirtied are copied back from
        // the image, and they stay resident: no madvise, no TLB shootdown, no refault.
        .pagemap_scan(pagemap_scan_setting(swap_configured()));
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&config)
}

/// Whether wasmtime may reset pool slots with `PAGEMAP_SCAN`.
///
/// wasmtime 48's scan resets only dirty pages that are *present*: a page a task dirtied
/// that the kernel swapped out before the reset is neither copied back nor released, so the
/// next task in that slot could read it. Without swap that cannot happen; with swap the
/// slot is reset by `madvise` instead (slower, but every page is reset). Swap turned on
/// after the worker started is not seen.
fn pagemap_scan_setting(swap: bool) -> Enabled {
    if swap { Enabled::No } else { Enabled::Auto }
}

/// Whether the machine has any swap area, from `/proc/swaps` (a header line, then one line
/// per area). Unreadable means unknown, taken as swap.
fn swap_configured() -> bool {
    match std::fs::read_to_string("/proc/swaps") {
        Ok(table) => has_swap_areas(&table),
        Err(_) => cfg!(target_os = "linux"),
    }
}

fn has_swap_areas(proc_swaps: &str) -> bool {
    proc_swaps
        .lines()
        .skip(1)
        .any(|line| !line.trim().is_empty())
}

/// Advances the engine's epoch every tick until the engine is dropped.
pub(crate) fn spawn_epoch_ticker(engine: EngineWeak, tick: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("celeriac-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_areas_are_read_from_proc_swaps() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!has_swap_areas(header));
        assert!(has_swap_areas(&format!(
            "{header}/swapfile                               file\t\t1048572\t\t0\t\t-2\n"
        )));
    }

    #[test]
    fn swap_turns_the_pagemap_reset_off() {
        assert_eq!(pagemap_scan_setting(true), Enabled::No);
        assert_eq!(pagemap_scan_setting(false), Enabled::Auto);
    }
}
