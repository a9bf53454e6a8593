//! What of the host's `/etc` the system directories need: the targets of the symlinks under
//! `/usr`, `/lib`… that lead into `/etc` (Debian's OpenJDK keeps `conf/security/java.security`
//! there, Maven its `m2.conf`, Python its `sitecustomize.py`). A tool bound in read-only
//! with its links dangling crashes at start; with them, it runs as on the host.
//!
//! Walking the system directories for symlinks takes ~0.3 s warm, seconds cold, so it is
//! done once and the result kept in the state directory, keyed by what would change it: the
//! system directories themselves and the package databases (installing a package is what
//! puts new links there). Secrets never enter, whatever points at them.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Package databases: one changes whenever a package is installed or removed.
const PACKAGE_DBS: [&str; 6] = [
    "/var/lib/dpkg/status",
    "/var/lib/rpm",
    "/usr/lib/sysimage/rpm",
    "/lib/apk/db/installed",
    "/var/lib/pacman/local",
    "/nix/var/nix/db/db.sqlite",
];

/// Beneath `/etc`: what no jail is shown, whatever points at it or asks for it (`--ro`).
/// Besides these, a file that is not world-readable (or a directory not world-searchable)
/// is left out: secrets are kept from other users by their modes.
const SECRETS: [&str; 24] = [
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "doas.conf",
    "ssh",
    "ssl/private",
    "pki/tls/private",
    "pki/CA/private",
    "krb5.keytab",
    "security/opasswd",
    "toolbox",
    "NetworkManager/system-connections",
    "wpa_supplicant",
    "wireguard",
    "openvpn",
    "ipsec.secrets",
    "ipsec.d/private",
    "ppp",
    "docker",
    "containers/auth.json",
    "credstore",
];

/// Whether `path` (absolute, beneath `/etc`) is a secret or lies in one.
pub fn is_secret(path: &Path) -> bool {
    let Ok(rest) = path.strip_prefix("/etc") else {
        return false;
    };
    SECRETS.iter().any(|secret| rest.starts_with(secret))
}

/// The `/etc` paths (files and directories, resolved) that symlinks under `system` lead to,
/// secrets left out: from the cache when it is current, else found and cached.
pub fn targets(system: &[PathBuf]) -> Vec<PathBuf> {
    let key = key(system);
    let cache = crate::etc_snapshot::state_dir().join("etc-links");
    if let Some(found) = read_cache(&cache, &key) {
        return found;
    }
    let found = scan(system);
    if let Err(err) = write_cache(&cache, &key, &found) {
        tracing::debug!("cache the /etc links of the system directories: {err}");
    }
    found
}

fn key(system: &[PathBuf]) -> String {
    let mut hasher = DefaultHasher::new();
    let stamp = |path: &Path, hasher: &mut DefaultHasher| {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            (
                path,
                meta.dev(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
            )
                .hash(hasher);
        }
    };
    for dir in system {
        stamp(dir, &mut hasher);
    }
    for db in PACKAGE_DBS {
        stamp(Path::new(db), &mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

fn read_cache(path: &Path, key: &str) -> Option<Vec<PathBuf>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    // Ours alone: anyone else could have planted what jails then show.
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != format!("key {key}") {
        return None;
    }
    Some(
        lines
            .map(PathBuf::from)
            .filter(|p| p.starts_with("/etc") && !is_secret(p))
            .collect(),
    )
}

fn write_cache(path: &Path, key: &str, found: &[PathBuf]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".etc-links.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    let mut text = format!("key {key}\n");
    for path in found {
        if let Some(path) = path.to_str().filter(|p| !p.contains('\n')) {
            text.push_str(path);
            text.push('\n');
        }
    }
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Walk the system directories (not following symlinks, not leaving their filesystems) for
/// symlinks whose target resolves beneath `/etc`.
fn scan(system: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    let mut seen_roots = BTreeSet::new();
    for root in system {
        let Ok(meta) = std::fs::symlink_metadata(root) else {
            continue;
        };
        // /bin -> usr/bin: walked as /usr.
        if !meta.is_dir() || !seen_roots.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    if entry.metadata().is_ok_and(|m| m.dev() == meta.dev()) {
                        stack.push(path);
                    }
                } else if kind.is_symlink() {
                    // Only a target that names etc can lead there (cheap: no resolution
                    // for the thousands of others).
                    let names_etc = std::fs::read_link(&path).is_ok_and(|t| {
                        t.as_os_str()
                            .as_encoded_bytes()
                            .windows(3)
                            .any(|w| w == b"etc")
                    });
                    if !names_etc {
                        continue;
                    }
                    if let Ok(resolved) = path.canonicalize() {
                        if resolved.starts_with("/etc")
                            && resolved != Path::new("/etc")
                            && !is_secret(&resolved)
                        {
                            found.insert(resolved);
                        }
                    }
                }
            }
        }
    }
    // A directory covers what lies beneath it.
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in found {
        if !kept.iter().any(|dir| path.starts_with(dir)) {
            kept.push(path);
        }
    }
    kept
}

/// The files (and their directories) of `path` beneath `/etc` a jail may be shown: itself
/// if it is a world-readable file, or the world-readable files beneath it if it is a
/// world-searchable directory (symlinks followed, secrets left out), each as (host path,
/// mode). At most `limit` files: /etc holds small things.
pub fn shown_files(path: &Path, limit: usize) -> Vec<(PathBuf, u32)> {
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(path) = stack.pop() {
        if is_secret(&path) || files.len() >= limit {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.mode() & 0o777;
        if meta.is_file() && mode & 0o004 != 0 {
            files.push((path, mode));
        } else if meta.is_dir() && mode & 0o001 != 0 {
            if let Ok(entries) = std::fs::read_dir(&path) {
                let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                names.sort();
                stack.extend(names.into_iter().rev());
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_known_by_path_whatever_lies_beneath() {
        for secret in [
            "/etc/shadow",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssl/private",
            "/etc/ssl/private/snakeoil.key",
            "/etc/sudoers.d/admins",
            "/etc/toolbox/policies/default.toml",
        ] {
            assert!(is_secret(Path::new(secret)), "{secret}");
        }
        for shown in [
            "/etc/java-17-openjdk/security/java.security",
            "/etc/maven/m2.conf",
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/shadowsocks.json.example",
            "/usr/share/shadow",
        ] {
            assert!(!is_secret(Path::new(shown)), "{shown}");
        }
    }

    #[test]
    fn links_into_etc_are_found_and_secrets_and_the_rest_left_out() {
        // A fake system directory whose links lead into the real /etc (the only /etc there
        // is): to a file every host has, to a secret, and elsewhere.
        let dir = tempfile::tempdir().expect("tempdir");
        let usr = dir.path().join("usr");
        std::fs::create_dir_all(usr.join("lib/tool/conf")).expect("mkdir");
        std::os::unix::fs::symlink("/etc/passwd", usr.join("lib/tool/conf/users")).expect("link");
        std::os::unix::fs::symlink(
            "../../../../../../../../etc/hostname",
            usr.join("lib/tool/conf/name"),
        )
        .expect("link");
        std::os::unix::fs::symlink("/etc/shadow", usr.join("lib/tool/conf/secret")).expect("link");
        std::os::unix::fs::symlink("/usr/share", usr.join("lib/tool/share")).expect("link");
        std::os::unix::fs::symlink("/etc/no-such-file-here", usr.join("lib/tool/dangling"))
            .expect("link");
        let found = scan(&[usr]);
        assert!(found.contains(&PathBuf::from("/etc/passwd")), "{found:?}");
        if Path::new("/etc/hostname").exists() {
            assert!(found.contains(&PathBuf::from("/etc/hostname")), "{found:?}");
        }
        assert!(!found.iter().any(|p| p.ends_with("shadow")), "{found:?}");
        assert!(found.iter().all(|p| p.starts_with("/etc")), "{found:?}");
    }
}
