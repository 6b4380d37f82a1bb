//! The runner pool over a fake backend: lifecycle rules without sandboxes.

mod pool;
