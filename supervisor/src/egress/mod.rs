//! Egress by allowlist: a proxy of each job's own, listening inside the job's network
//! namespace, as the only way out of it (see `proxy`), judged by [`rules`].

pub mod proxy;
pub mod rules;

pub use proxy::{Egress, Judge, Proxy};
pub use rules::{Rule, Rules};

/// Where a job's proxy listens, on the job's own `lo`: HTTP (CONNECT, and absolute-form
/// requests for plain HTTP).
pub const HTTP_PORT: u16 = 3128;
/// SOCKS5, names resolved by the proxy (`socks5h://`).
pub const SOCKS_PORT: u16 = 1080;
/// The proxy's ports: the only ones a job in mode `none` or `allowlist` may connect to.
pub const PORTS: [u16; 2] = [HTTP_PORT, SOCKS_PORT];

/// The environment that points tools at the proxy. `ALL_PROXY` names the HTTP proxy too:
/// as `socks5h://` it makes httpx refuse to build a client where socksio is not installed,
/// and every tool that reads it speaks HTTP proxies. `NO_PROXY` is empty: nothing is
/// reached but through the proxy.
pub const ENVIRONMENT: [(&str, &str); 15] = [
    ("HTTP_PROXY", "http://127.0.0.1:3128"),
    ("HTTPS_PROXY", "http://127.0.0.1:3128"),
    ("ALL_PROXY", "http://127.0.0.1:3128"),
    ("http_proxy", "http://127.0.0.1:3128"),
    ("https_proxy", "http://127.0.0.1:3128"),
    ("all_proxy", "http://127.0.0.1:3128"),
    ("NO_PROXY", ""),
    ("no_proxy", ""),
    ("npm_config_proxy", "http://127.0.0.1:3128"),
    ("npm_config_https_proxy", "http://127.0.0.1:3128"),
    ("YARN_HTTP_PROXY", "http://127.0.0.1:3128"),
    ("YARN_HTTPS_PROXY", "http://127.0.0.1:3128"),
    ("PIP_PROXY", "http://127.0.0.1:3128"),
    ("CARGO_HTTP_PROXY", "http://127.0.0.1:3128"),
    ("RSYNC_PROXY", "127.0.0.1:3128"),
];
