//! What one plugin instance may use: memory, tables, instances and stack
//! ([`Limits`]), and the limiter that enforces them on a step's store.

use wasmtime::ResourceLimiter;

/// Resource limits of every plugin instance.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory of one instance, in bytes.
    pub memory: usize,
    /// Elements of one table.
    pub table_elements: usize,
    /// Instances, memories and tables in one store: a component is a handful of
    /// core instances, never hundreds.
    pub instances: usize,
    pub memories: usize,
    pub tables: usize,
    /// Wasm stack, in bytes.
    pub stack: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 256 << 20,
            table_elements: 100_000,
            instances: 32,
            memories: 8,
            tables: 16,
            stack: 1 << 20,
        }
    }
}

/// Enforces [`Limits`] on one store and remembers which limit was hit, so the step
/// error can say so instead of showing a bare trap.
pub(crate) struct Limiter {
    limits: Limits,
    pub(crate) exceeded: Option<String>,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            limits: limits.clone(),
            exceeded: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory {
            let msg = format!(
                "memory limit of {} MiB exceeded (asked to grow from {} to {} MiB)",
                self.limits.memory >> 20,
                current >> 20,
                desired >> 20
            );
            self.exceeded = Some(msg.clone());
            // Trapping rather than failing the grow: a plugin whose allocation fails
            // would abort anyway, and the trap carries the reason.
            return Err(wasmtime::format_err!(msg));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.table_elements {
            let msg = format!(
                "table limit of {} elements exceeded",
                self.limits.table_elements
            );
            self.exceeded = Some(msg.clone());
            return Err(wasmtime::format_err!(msg));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.limits.instances
    }

    fn tables(&self) -> usize {
        self.limits.tables
    }

    fn memories(&self) -> usize {
        self.limits.memories
    }
}
