//! `chiron-runner-agent <spec>`: the runner agent without the rest of the gateway, the same
//! code as `chiron runner-agent`. Every sandbox's init is one of these processes, and each
//! holds its own copy of its binary's relocated data (a megabyte for `chiron`, whose whole
//! gateway is relocated at start) plus the code pages it touched: this binary keeps an idle
//! runner small. `chiron serve` uses it when it sits next to the `chiron` binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(spec) = std::env::args().nth(1) else {
        eprintln!("chiron-runner-agent: usage: chiron-runner-agent <spec>");
        return ExitCode::from(2);
    };
    chiron_runner::agent::run_json("chiron-runner-agent", &spec)
}
