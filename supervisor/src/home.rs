//! What of the caller's home a job sees: per-user toolchains (rustup, pyenv, nvm, asdf,
//! `~/.local/bin`), package caches and git's config, read-only at their own paths — so
//! `cargo`, `python3` and `git commit` behave in the jail as they do for the caller — and
//! never the credentials a home also holds.

use std::path::{Component, Path, PathBuf};

/// How much of the caller's home a policy shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Show {
    /// Nothing: HOME is /tmp (unless it lies in the workspace).
    #[default]
    None,
    /// A private, writable tmpfs at the home's path, with the policy's toolchain entries
    /// bound read-only in it.
    Toolchains,
    /// The whole home, read-only, but its secrets.
    All,
}

/// The toolchain and config entries of a home that hold no secrets: what `show =
/// "toolchains"` binds when a policy names none of its own.
pub const TOOLCHAINS: [&str; 27] = [
    ".cargo/bin",
    ".cargo/registry",
    ".cargo/git",
    ".rustup",
    ".pyenv",
    ".nvm",
    ".asdf",
    ".volta",
    ".bun/bin",
    ".deno/bin",
    ".sdkman/candidates",
    ".local/bin",
    ".local/lib",
    ".local/share/uv",
    ".local/share/pnpm",
    "go/bin",
    "go/pkg/mod",
    ".npm/_cacache",
    ".cache/pip",
    ".cache/uv",
    ".cache/go-build",
    ".m2/repository",
    ".gradle/caches",
    ".gradle/wrapper",
    ".gitconfig",
    ".config/git/config",
    ".config/git/ignore",
];

/// Never shown, whatever the policy: credentials, keys, tokens and histories. Relative to
/// the home; a directory covers what lies beneath it.
pub const SECRETS: [&str; 38] = [
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".kube",
    ".docker",
    ".netrc",
    ".git-credentials",
    ".config/git/credentials",
    ".config/gh",
    ".config/hub",
    ".npmrc",
    ".yarnrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".m2/settings.xml",
    ".m2/settings-security.xml",
    ".gradle/gradle.properties",
    ".terraform.d",
    ".vault-token",
    ".config/op",
    ".password-store",
    ".local/share/keyrings",
    ".pki",
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".node_repl_history",
    ".psql_history",
    ".mysql_history",
    ".sqlite_history",
    ".lesshst",
    ".viminfo",
];

/// Whether `rel` (relative to a home) is a secret or lies in one — or holds one, for a
/// directory that would be shown whole.
pub fn is_secret(rel: &Path) -> bool {
    // As strings: a policy's load checks every toolchain entry against every secret, and
    // Path::starts_with parses components each time.
    let Some(rel) = rel.to_str() else {
        return SECRETS.iter().any(|secret| rel.starts_with(secret));
    };
    let rel = rel.trim_start_matches("./");
    SECRETS.iter().any(|secret| within(rel, secret))
}

/// Whether `path` is `dir` or lies beneath it, both plain relative or both absolute paths
/// without `.` or `..` components (trailing slashes allowed).
pub fn within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    match path.strip_prefix(dir) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || dir.is_empty(),
        None => false,
    }
}

/// A policy's toolchain entry: a plain relative path, no secret.
pub fn check_entry(entry: &Path) -> Result<(), String> {
    if entry.as_os_str().is_empty()
        || entry.is_absolute()
        || entry
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "{:?} must be a plain path relative to the home (like \".cargo/bin\")",
            entry.display().to_string()
        ));
    }
    if is_secret(entry) {
        return Err(format!(
            "{} holds credentials or history: a home's secrets are never shown",
            entry.display()
        ));
    }
    Ok(())
}

/// The caller's home: `$HOME` when it is a directory the caller owns (so `HOME=… toolbox
/// run` picks another), else the caller's passwd entry's. `None` for a home a jail cannot
/// show at its own path: `/`, or within a system directory.
pub fn of_caller(uid: u32, env_home: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let owned =
        |path: &Path| std::fs::metadata(path).is_ok_and(|meta| meta.is_dir() && meta.uid() == uid);
    let from_env = env_home
        .map(PathBuf::from)
        .filter(|home| home.is_absolute() && owned(home));
    let home = from_env.or_else(|| passwd_home(uid).filter(|home| owned(home)))?;
    let home = home.canonicalize().ok()?;
    let unfit = [
        "/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev", "/tmp",
        "/var/tmp",
    ];
    if unfit.iter().any(|dir| home == Path::new(dir))
        || ["/usr", "/etc", "/proc", "/sys", "/dev"]
            .iter()
            .any(|dir| home.starts_with(dir))
    {
        return None;
    }
    Some(home)
}

/// The home directory of `uid` in /etc/passwd (read directly, as the rest of toolbox does).
fn passwd_home(uid: u32) -> Option<PathBuf> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.get(2)?.parse::<u32>().ok()? == uid)
            .then(|| fields.get(5).map(PathBuf::from))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_compares_whole_components() {
        assert!(within(".ssh", ".ssh"));
        assert!(within(".ssh/id_rsa", ".ssh"));
        assert!(within(".ssh/", ".ssh"));
        assert!(!within(".sshd", ".ssh"));
        assert!(!within(".ss", ".ssh"));
        assert!(within("/etc/ssl/private/k", "/etc/ssl/private"));
        assert!(!within("/etc/ssl/privatekeys", "/etc/ssl/private"));
        assert!(is_secret(Path::new("./.aws/credentials")));
    }

    #[test]
    fn secrets_are_never_toolchains() {
        for entry in TOOLCHAINS {
            assert!(!is_secret(Path::new(entry)), "{entry}");
            check_entry(Path::new(entry)).expect(entry);
        }
        for bad in [
            ".ssh",
            ".ssh/id_ed25519",
            ".aws/credentials",
            ".netrc",
            ".config/gh/hosts.yml",
        ] {
            assert!(check_entry(Path::new(bad)).is_err(), "{bad}");
        }
        for bad in ["", "/root/.cargo", "../x", ".cargo/../.ssh"] {
            assert!(check_entry(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
