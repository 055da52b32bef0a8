//! Debian packages for the VM tier: QEMU (installed when missing) and the
//! guest kernels (downloaded and unpacked into target/vm, never installed).
//!
//! apt runs with a private package-list directory under target/vm/apt, on
//! top of the machine's own sources plus `<codename>-backports` when the
//! machine does not list that suite: the 6.12 kernel lives there, and so
//! does the QEMU that coexists with this machine's qemu-utils (bookworm's
//! QEMU 7.2 would remove the newer qemu-utils). The machine's apt
//! configuration and its lists in /var/lib/apt are left alone.

use crate::util::{self, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The meta-package whose dependency names the current cloud kernel image.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// The QEMU package and the binary it provides.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists older than this are refreshed (if the network allows).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Which guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The Debian release's own cloud kernel (6.1 on bookworm).
    Stable,
    /// The backports cloud kernel (6.12 on bookworm-backports).
    Backports,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Stable => "stable",
            Flavour::Backports => "backports",
        }
    }
}

/// A kernel package resolved from the package lists.
#[derive(Debug, Clone)]
pub struct KernelPackage {
    pub name: String,
    pub version: String,
}

/// An unpacked kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub package: KernelPackage,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
}

pub struct Apt {
    dir: PathBuf,
    /// `apt-get update` ran in this process already.
    updated: std::cell::Cell<bool>,
    codename: String,
    backports: String,
}

impl Apt {
    /// Prepares the private apt state in `dir` (target/vm/apt).
    pub fn new(dir: &Path) -> Result<Self> {
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let codename = os_release_value(&os, "VERSION_CODENAME")
            .filter(|_| os_release_value(&os, "ID").as_deref() == Some("debian"))
            .ok_or(
                "vm-test fetches Debian cloud kernels with apt: this machine is not Debian \
                 (no ID=debian / VERSION_CODENAME in /etc/os-release)",
            )?;
        let backports = format!("{codename}-backports");
        for d in ["lists/partial", "cache/archives/partial"] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        }
        let list = if system_lists_suite(&backports) {
            format!("# {backports} is in the machine's own sources\n")
        } else {
            format!("deb [signed-by={KEYRING}] {DEBIAN_MIRROR} {backports} main\n")
        };
        let path = dir.join("sources.list");
        std::fs::write(&path, list).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            updated: std::cell::Cell::new(false),
            codename,
            backports,
        })
    }

    pub fn codename(&self) -> &str {
        &self.codename
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        [
            format!("Dir::Etc::SourceList={d}/sources.list"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // Root downloads into target/ (the _apt user may not reach it).
            "APT::Sandbox::User=root".into(),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    fn cmd(&self, tool: &str, release: Option<&str>) -> Command {
        let mut c = Command::new(tool);
        c.args(self.options())
            .env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(r) = release {
            c.args(["-t", r]);
        }
        c
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("lists/.updated")
    }

    fn have_lists(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists")).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// Runs `apt-get update` on the private lists when they are missing,
    /// older than a day, or `force` (at most once per run). A failed refresh
    /// of existing lists is a warning (offline runs keep working from the
    /// cache).
    pub fn ensure_lists(&self, force: bool) -> Result<()> {
        let age = std::fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let fresh = self.have_lists() && age.is_some_and(|a| a < LISTS_MAX_AGE);
        if (fresh && !force) || self.updated.get() {
            return Ok(());
        }
        eprintln!(
            "xtask: vm-test: apt-get update (private lists in {}, plus {})",
            self.dir.join("lists").display(),
            self.backports
        );
        let t0 = Instant::now();
        let r = util::run_output(self.cmd("apt-get", None).arg("update"));
        match r {
            Ok(out) => {
                eprintln!(
                    "xtask: vm-test: package lists updated in {:.1} s",
                    t0.elapsed().as_secs_f64()
                );
                if out.contains("W: ") || out.contains("E: ") {
                    eprint!("{out}");
                }
                std::fs::write(self.stamp(), "")
                    .map_err(|e| format!("write {}: {e}", self.stamp().display()))?;
                self.updated.set(true);
                Ok(())
            }
            Err(e) if self.have_lists() => {
                eprintln!(
                    "xtask: vm-test: warning: apt-get update failed, using the old lists:\n{e}"
                );
                Ok(())
            }
            Err(e) => Err(format!("apt-get update failed:\n{e}")),
        }
    }

    /// The current cloud kernel image of `flavour`, e.g.
    /// `linux-image-6.1.0-56-cloud-amd64` 6.1.192-2.
    pub fn resolve_kernel(&self, flavour: Flavour) -> Result<KernelPackage> {
        let release = match flavour {
            Flavour::Stable => None,
            Flavour::Backports => Some(self.backports.as_str()),
        };
        let deps = util::run_output(
            self.cmd("apt-cache", release)
                .args(["depends", KERNEL_META]),
        )?;
        let name = first_kernel_dependency(&deps).ok_or_else(|| {
            format!(
                "`apt-cache depends {KERNEL_META}` ({}) names no linux-image package:\n{deps}",
                release.unwrap_or(&self.codename)
            )
        })?;
        let policy = util::run_output(self.cmd("apt-cache", release).args(["policy", &name]))?;
        let version = candidate(&policy)
            .ok_or_else(|| format!("no installable version of {name}:\n{policy}"))?;
        let is_bpo = version.contains("~bpo");
        if is_bpo != (flavour == Flavour::Backports) {
            return Err(format!(
                "resolved the {} kernel to {name} {version}, which is {}from {}",
                flavour.name(),
                if is_bpo { "" } else { "not " },
                self.backports
            ));
        }
        Ok(KernelPackage { name, version })
    }

    /// Downloads and unpacks `pkg` into `cache/<name>/` unless it is there.
    pub fn fetch_kernel(&self, pkg: &KernelPackage, cache: &Path) -> Result<Kernel> {
        let dest = cache.join(&pkg.name);
        let stamp = dest.join("PACKAGE");
        let want = format!("{} {}\n", pkg.name, pkg.version);
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
            return unpacked(&dest, pkg);
        }
        let work = cache.join(".download");
        let _ = std::fs::remove_dir_all(&work);
        let tmp = cache.join(format!(".{}.tmp", pkg.name));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
        let t0 = Instant::now();
        let spec = format!("{}={}", pkg.name, pkg.version);
        util::run_output(
            self.cmd("apt-get", None)
                .args(["download", &spec])
                .current_dir(&work),
        )
        .map_err(|e| format!("apt-get download {spec}: {e}"))?;
        let deb = std::fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| format!("apt-get download {spec} left no .deb in {}", work.display()))?;
        let size = std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
        util::run_output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        // Only /boot is needed: the guest loads no modules.
        for entry in std::fs::read_dir(&tmp)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            if entry.file_name() != "boot" {
                let p = entry.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(|e| format!("remove {}: {e}", p.display()))?;
            }
        }
        std::fs::write(tmp.join("PACKAGE"), &want).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest)
            .map_err(|e| format!("rename {} -> {}: {e}", tmp.display(), dest.display()))?;
        let _ = std::fs::remove_dir_all(&work);
        eprintln!(
            "xtask: vm-test: downloaded {spec} ({:.1} MB) and unpacked it into {} in {:.1} s",
            size as f64 / 1e6,
            dest.display(),
            t0.elapsed().as_secs_f64()
        );
        unpacked(&dest, pkg)
    }

    /// Installs QEMU if `qemu-system-x86_64` is not on PATH; returns its path.
    pub fn ensure_qemu(&self) -> Result<PathBuf> {
        if let Some(p) = find_in_path(QEMU_BINARY) {
            return Ok(p);
        }
        if !util::is_root() {
            return Err(format!(
                "{QEMU_BINARY} not found. Install the Debian package {QEMU_PACKAGE} \
                 (as root: apt-get install --no-install-recommends {QEMU_PACKAGE}, \
                 from {} on a machine with backports' qemu-utils), or run vm-test as root \
                 to have it installed",
                self.backports
            ));
        }
        self.ensure_lists(false)?;
        let release = match self.pick_qemu_release() {
            Ok(r) => r,
            Err(_) => {
                // Perhaps the lists are stale (a version vanished from the mirror).
                self.ensure_lists(true)?;
                self.pick_qemu_release()?
            }
        };
        let from = release.unwrap_or(&self.codename).to_string();
        eprintln!(
            "xtask: vm-test: installing {QEMU_PACKAGE} from {from}: \
             apt-get install -y --no-install-recommends{} {QEMU_PACKAGE}",
            release.map(|r| format!(" -t {r}")).unwrap_or_default()
        );
        let t0 = Instant::now();
        let install = |apt: &Apt| {
            util::run_status(apt.cmd("apt-get", release).args([
                "install",
                "-y",
                "--no-install-recommends",
                QEMU_PACKAGE,
            ]))
        };
        if install(self).is_err() {
            eprintln!("xtask: vm-test: install failed; refreshing the package lists and retrying");
            self.ensure_lists(true)?;
            install(self)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        // The downloaded .debs are not needed any more.
        if let Ok(rd) = std::fs::read_dir(self.dir.join("cache/archives")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "deb") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let path = find_in_path(QEMU_BINARY).ok_or_else(|| {
            format!("installed {QEMU_PACKAGE} but {QEMU_BINARY} is still not on PATH")
        })?;
        eprintln!("xtask: vm-test: installed {QEMU_PACKAGE} from {from} in {secs:.1} s");
        Ok(path)
    }

    /// The target release to install QEMU from: the default one unless that
    /// would remove installed packages (bookworm's 7.2 removes a newer
    /// qemu-utils), then backports.
    fn pick_qemu_release(&self) -> Result<Option<&str>> {
        let mut refused = Vec::new();
        for release in [None, Some(self.backports.as_str())] {
            let sim = util::run_output(self.cmd("apt-get", release).args([
                "install",
                "-s",
                "--no-install-recommends",
                QEMU_PACKAGE,
            ]));
            let from = release.unwrap_or(&self.codename);
            match sim {
                Ok(out) => {
                    let removed = removals(&out);
                    if removed.is_empty() {
                        return Ok(release);
                    }
                    refused.push(format!(
                        "from {from} it would remove {}",
                        removed.join(", ")
                    ));
                }
                Err(e) => refused.push(format!("from {from}: {e}")),
            }
        }
        Err(format!(
            "cannot install {QEMU_PACKAGE} without breaking installed packages:\n  {}",
            refused.join("\n  ")
        ))
    }
}

fn unpacked(dir: &Path, pkg: &KernelPackage) -> Result<Kernel> {
    let boot = dir.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&boot)
            .map_err(|e| format!("{}: {e}", boot.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .ok_or_else(|| format!("{} has no {prefix}* (from {})", boot.display(), pkg.name))
    };
    Ok(Kernel {
        package: pkg.clone(),
        vmlinuz: find("vmlinuz-")?,
        config: find("config-")?,
    })
}

pub fn find_in_path(bin: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(bin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        let v = v.trim().trim_matches('"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// Whether the machine's apt sources (one-line or deb822) name `suite`.
fn system_lists_suite(suite: &str) -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources")),
        );
    }
    files
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|t| sources_name_suite(&t, suite)))
}

fn sources_name_suite(text: &str, suite: &str) -> bool {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.split_whitespace().any(|w| w == suite))
}

/// The first `Depends: linux-image-...` of `apt-cache depends` output.
fn first_kernel_dependency(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let l = l.trim().trim_start_matches('|');
        let dep = l.strip_prefix("Depends:")?.trim();
        let name = dep.split_whitespace().next()?;
        name.starts_with("linux-image-").then(|| name.to_string())
    })
}

/// `Candidate:` of `apt-cache policy` output.
fn candidate(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let v = l.trim().strip_prefix("Candidate:")?.trim();
        (v != "(none)" && !v.is_empty()).then(|| v.to_string())
    })
}

/// Packages an `apt-get -s` run would remove.
fn removals(sim: &str) -> Vec<String> {
    sim.lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_output() {
        let deps = "linux-image-cloud-amd64\n  Depends: linux-image-6.12.95+deb12-cloud-amd64\n";
        assert_eq!(
            first_kernel_dependency(deps).as_deref(),
            Some("linux-image-6.12.95+deb12-cloud-amd64")
        );
        let alt = "linux-image-cloud-amd64\n |Depends: linux-image-6.1.0-56-cloud-amd64\n  Depends: linux-image-6.1.0-55-cloud-amd64\n";
        assert_eq!(
            first_kernel_dependency(alt).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            first_kernel_dependency("x\n  Depends: initramfs-tools\n"),
            None
        );

        let policy = "linux-image-6.1.0-56-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(candidate(policy).as_deref(), Some("6.1.192-2"));
        assert_eq!(
            candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );

        let sim = "Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\nInst seabios (1.16.2-1 Debian:12 [all])\n";
        assert_eq!(removals(sim), vec!["qemu-utils".to_string()]);
        assert!(removals("Inst a (1 x)\nConf a (1 x)\n").is_empty());
    }

    #[test]
    fn parses_os_release_and_sources() {
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(
            os_release_value(os, "VERSION_CODENAME").as_deref(),
            Some("bookworm")
        );
        assert_eq!(os_release_value(os, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_value(os, "VERSION"), None);

        let deb822 =
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n";
        assert!(!sources_name_suite(deb822, "bookworm-backports"));
        assert!(sources_name_suite(
            &deb822.replace("updates", "updates bookworm-backports"),
            "bookworm-backports"
        ));
        assert!(sources_name_suite(
            "deb http://deb.debian.org/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
        assert!(!sources_name_suite(
            "# deb http://deb.debian.org/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
    }
}
