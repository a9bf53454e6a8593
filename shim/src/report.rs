//! The status pipe back to the supervisor. Every process of the shim (host side, PID 1, the
//! tool before exec) writes to the same pipe; each line is one `write(2)` under PIPE_BUF,
//! so lines never interleave.

use toolbox_spec::Status;

use crate::error::SetupError;
use crate::sys;

pub fn send(status: &Status) {
    let line = status.to_line();
    // If the supervisor is gone there is nobody to tell: the error is deliberately ignored.
    let _ = nix::unistd::write(sys::status_fd(), &line);
}

pub fn setup_failed(err: &SetupError) {
    send(&Status::SetupFailed {
        step: err.step().to_string(),
        error: err.to_string(),
    });
}
