//! toolbox: a Linux-native sandboxed tool-execution supervisor.
//!
//! A job goes request → [`job::plan`] (checked against a [`policy::Policy`]) →
//! [`engine::Engine::run`], which builds the jail through the exec shim, streams capped
//! output, enforces the limits and returns the [`record::JobResult`].
#![deny(unsafe_code)]

pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod doctor;
pub mod engine;
pub mod etc_links;
pub mod etc_snapshot;
pub mod home;
pub mod job;
pub mod output;
pub mod policy;
pub mod record;
pub mod seccomp;
pub mod spawn;
mod sys;
pub mod units;
pub mod view;
