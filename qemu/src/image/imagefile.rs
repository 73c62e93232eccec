//! The Imagefile: a Dockerfile-like recipe for a VM image.
//!
//! ```text
//! # comment
//! FROM disk.qcow2          # a disk in the build context, or `FROM scratch` (direct boot only)
//! FORMAT qcow2             # qcow2 | raw; default: qcow2 when the file has the qcow2 magic
//! ARCH x86_64              # x86_64 (amd64, x64) | aarch64 (arm64); default x86_64
//! KERNEL vmlinuz           # direct kernel boot
//! INITRD initrd.img        # needs KERNEL
//! CMDLINE console=ttyS0 \
//!         quiet            # a trailing backslash continues the line
//! LABEL key=value "k2=v with spaces"
//! ```
//!
//! Instructions are case-insensitive; `#` at the start of a line or after whitespace starts a
//! comment. Every error names the line: `Imagefile:3: unknown instruction RUN`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::disk::{self, Arch, DiskFormat, DiskProbe};

/// A malformed Imagefile, with the 1-based line the problem is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ImagefileError {
    /// The Imagefile's name as the user knows it (`Imagefile` when parsed from text).
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A value with the line it was written on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// 1-based line of the instruction.
    pub line: usize,
}

/// What `FROM` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseDisk {
    /// `FROM scratch`: no disk, the image boots its kernel directly.
    Scratch,
    /// A disk file, relative to the build context.
    File(String),
}

/// A parsed Imagefile (paths not yet checked against a context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imagefile {
    /// Name used in error messages.
    pub file: String,
    /// `FROM`.
    pub from: Spanned<BaseDisk>,
    /// `FORMAT`, when given.
    pub format: Option<Spanned<DiskFormat>>,
    /// `ARCH` (default x86_64).
    pub arch: Arch,
    /// `KERNEL`, relative to the context.
    pub kernel: Option<Spanned<String>>,
    /// `INITRD`, relative to the context.
    pub initrd: Option<Spanned<String>>,
    /// `CMDLINE`, continuation lines joined by one space.
    pub cmdline: Option<String>,
    /// `LABEL`s, later ones overriding earlier ones.
    pub labels: BTreeMap<String, String>,
}

/// An Imagefile whose files were found inside the build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImagefile {
    /// The base disk, its format and header facts; `None` for `FROM scratch`.
    pub disk: Option<(PathBuf, DiskProbe)>,
    /// The kernel file.
    pub kernel: Option<PathBuf>,
    /// The initrd file.
    pub initrd: Option<PathBuf>,
    /// Architecture.
    pub arch: Arch,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

const INSTRUCTIONS: &str = "FROM, FORMAT, ARCH, KERNEL, INITRD, CMDLINE, LABEL";

impl Imagefile {
    /// Reads and parses the Imagefile at `path` (errors are named by its file name).
    pub fn read(path: &Path) -> Result<Imagefile, super::ImageError> {
        let text = std::fs::read_to_string(path)
            .map_err(super::error::io_err("reading the Imagefile", path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Imagefile".into());
        Ok(Imagefile::parse_named(&text, &name)?)
    }

    /// Parses Imagefile text; errors say `Imagefile:LINE: …`.
    pub fn parse(text: &str) -> Result<Imagefile, ImagefileError> {
        Imagefile::parse_named(text, "Imagefile")
    }

    /// Parses Imagefile text; errors say `<file>:LINE: …`.
    pub fn parse_named(text: &str, file: &str) -> Result<Imagefile, ImagefileError> {
        let err = |line: usize, message: String| ImagefileError {
            file: file.to_string(),
            line,
            message,
        };
        let mut from: Option<Spanned<BaseDisk>> = None;
        let mut format: Option<Spanned<DiskFormat>> = None;
        let mut arch: Option<Spanned<Arch>> = None;
        let mut kernel: Option<Spanned<String>> = None;
        let mut initrd: Option<Spanned<String>> = None;
        let mut cmdline: Option<Spanned<String>> = None;
        let mut labels = BTreeMap::new();

        let lines = logical_lines(text).map_err(|(line, m)| err(line, m))?;
        let last_line = text.lines().count().max(1);
        for (line, content) in lines {
            let (word, rest) = match content.split_once(char::is_whitespace) {
                Some((w, r)) => (w, r.trim()),
                None => (content.as_str(), ""),
            };
            let instruction = word.to_ascii_uppercase();
            let once = |seen: Option<usize>| match seen {
                Some(first) => Err(err(
                    line,
                    format!("{instruction} given twice (first on line {first})"),
                )),
                None => Ok(()),
            };
            let one_arg = |what: &str| -> Result<String, ImagefileError> {
                let args = tokens(rest).map_err(|m| err(line, m))?;
                match args.as_slice() {
                    [a] => Ok(a.clone()),
                    [] => Err(err(line, format!("{instruction} needs {what}"))),
                    _ => Err(err(
                        line,
                        format!("{instruction} takes exactly one argument ({what})"),
                    )),
                }
            };
            match instruction.as_str() {
                "FROM" => {
                    once(from.as_ref().map(|s| s.line))?;
                    let arg = one_arg("a disk file or `scratch`")?;
                    let value = if arg == "scratch" {
                        BaseDisk::Scratch
                    } else {
                        BaseDisk::File(arg)
                    };
                    from = Some(Spanned { value, line });
                }
                "FORMAT" => {
                    once(format.as_ref().map(|s| s.line))?;
                    let arg = one_arg("qcow2 or raw")?;
                    let value = DiskFormat::parse(&arg.to_ascii_lowercase()).ok_or_else(|| {
                        err(line, format!("unknown disk format {arg:?} (qcow2 or raw)"))
                    })?;
                    format = Some(Spanned { value, line });
                }
                "ARCH" => {
                    once(arch.as_ref().map(|s| s.line))?;
                    let arg = one_arg("an architecture")?;
                    let value = Arch::parse(&arg).ok_or_else(|| {
                        err(
                            line,
                            format!("unknown architecture {arg:?} (x86_64/amd64 or aarch64/arm64)"),
                        )
                    })?;
                    arch = Some(Spanned { value, line });
                }
                "KERNEL" => {
                    once(kernel.as_ref().map(|s| s.line))?;
                    kernel = Some(Spanned {
                        value: one_arg("a kernel file")?,
                        line,
                    });
                }
                "INITRD" => {
                    once(initrd.as_ref().map(|s| s.line))?;
                    initrd = Some(Spanned {
                        value: one_arg("an initrd file")?,
                        line,
                    });
                }
                "CMDLINE" => {
                    once(cmdline.as_ref().map(|s| s.line))?;
                    if rest.is_empty() {
                        return Err(err(line, "CMDLINE needs a kernel command line".into()));
                    }
                    cmdline = Some(Spanned {
                        value: rest.to_string(),
                        line,
                    });
                }
                "LABEL" => {
                    let args = tokens(rest).map_err(|m| err(line, m))?;
                    if args.is_empty() {
                        return Err(err(line, "LABEL needs key=value pairs".into()));
                    }
                    for a in args {
                        match a.split_once('=') {
                            Some((k, v)) if !k.is_empty() => {
                                labels.insert(k.to_string(), v.to_string());
                            }
                            _ => {
                                return Err(err(line, format!("LABEL {a:?} is not key=value")));
                            }
                        }
                    }
                }
                _ => {
                    return Err(err(
                        line,
                        format!("unknown instruction {word} (expected one of {INSTRUCTIONS})"),
                    ))
                }
            }
        }

        let Some(from) = from else {
            return Err(err(
                last_line,
                "missing FROM (a disk file in the context, or `FROM scratch`)".into(),
            ));
        };
        if let (Some(i), None) = (&initrd, &kernel) {
            return Err(err(i.line, "INITRD needs a KERNEL".into()));
        }
        if let Some(c) = &cmdline {
            if kernel.is_none() {
                return Err(err(
                    c.line,
                    "CMDLINE needs a KERNEL (a disk boots its own bootloader's command line)"
                        .into(),
                ));
            }
        }
        if from.value == BaseDisk::Scratch {
            if kernel.is_none() {
                return Err(err(
                    from.line,
                    "FROM scratch has no disk, so it needs a KERNEL to boot".into(),
                ));
            }
            if let Some(f) = &format {
                return Err(err(
                    f.line,
                    "FORMAT with FROM scratch: there is no disk".into(),
                ));
            }
        }
        Ok(Imagefile {
            file: file.to_string(),
            from,
            format,
            arch: arch.map(|a| a.value).unwrap_or_default(),
            kernel,
            initrd,
            cmdline: cmdline.map(|c| c.value),
            labels,
        })
    }

    /// Finds every file inside `context` and checks the disk's format.
    ///
    /// Paths must be relative, without `..`, and must not leave the context through a symlink.
    pub fn resolve(&self, context: &Path) -> Result<ResolvedImagefile, ImagefileError> {
        let err = |line: usize, message: String| ImagefileError {
            file: self.file.clone(),
            line,
            message,
        };
        let root = context.canonicalize().map_err(|e| {
            err(
                self.from.line,
                format!("build context {}: {e}", context.display()),
            )
        })?;
        let find = |rel: &str, line: usize| -> Result<PathBuf, ImagefileError> {
            let p = Path::new(rel);
            if p.is_absolute() {
                return Err(err(
                    line,
                    format!("{rel}: absolute paths are not allowed (use a path in the context)"),
                ));
            }
            if p.components().any(|c| {
                matches!(
                    c,
                    Component::ParentDir | Component::RootDir | Component::Prefix(_)
                )
            }) {
                return Err(err(
                    line,
                    format!("{rel}: '..' would leave the build context"),
                ));
            }
            let full = root.join(p);
            let real = full
                .canonicalize()
                .map_err(|e| err(line, format!("{rel}: {e} (in {})", root.display())))?;
            if !real.starts_with(&root) {
                return Err(err(
                    line,
                    format!(
                        "{rel}: resolves to {} outside the build context",
                        real.display()
                    ),
                ));
            }
            if !real.is_file() {
                return Err(err(line, format!("{rel}: not a regular file")));
            }
            Ok(real)
        };
        let disk = match &self.from.value {
            BaseDisk::Scratch => None,
            BaseDisk::File(rel) => {
                let path = find(rel, self.from.line)?;
                let probe = disk::probe(&path).map_err(|e| err(self.from.line, e.to_string()))?;
                let format = self
                    .format
                    .as_ref()
                    .map(|f| f.value)
                    .unwrap_or(probe.format);
                let line = self
                    .format
                    .as_ref()
                    .map(|f| f.line)
                    .unwrap_or(self.from.line);
                let checked =
                    disk::check(&path, format).map_err(|e| err(line, format!("{rel}: {e}")))?;
                Some((path, checked))
            }
        };
        let kernel = match &self.kernel {
            Some(k) => Some(find(&k.value, k.line)?),
            None => None,
        };
        let initrd = match &self.initrd {
            Some(i) => Some(find(&i.value, i.line)?),
            None => None,
        };
        Ok(ResolvedImagefile {
            disk,
            kernel,
            initrd,
            arch: self.arch,
            cmdline: self.cmdline.clone(),
            labels: self.labels.clone(),
        })
    }
}

/// Joins continuation lines and drops comments and blanks: `(first line number, text)`.
fn logical_lines(text: &str) -> Result<Vec<(usize, String)>, (usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let content = strip_comment(raw).trim();
        if content.is_empty() {
            // Blank and comment lines inside a continuation are skipped, as docker does.
            continue;
        }
        let (content, continues) = match content.strip_suffix('\\') {
            Some(c) => (c.trim_end(), true),
            None => (content, false),
        };
        let (start, mut acc) = pending.take().unwrap_or((n, String::new()));
        if !acc.is_empty() && !content.is_empty() {
            acc.push(' ');
        }
        acc.push_str(content);
        if continues {
            pending = Some((start, acc));
        } else if !acc.is_empty() {
            out.push((start, acc));
        }
    }
    if let Some((start, _)) = pending {
        return Err((start, "a line continuation ends the file".into()));
    }
    Ok(out)
}

/// Cuts a `#` comment that starts the line or follows whitespace (outside double quotes).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted && prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// Splits arguments on whitespace; `"…"` groups (with `\"` and `\\` escapes).
fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            '\\' if quoted => match chars.next() {
                Some(e) => cur.push(e),
                None => return Err("a backslash ends a quoted string".into()),
            },
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quoted {
        return Err("unterminated double quote".into());
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perr(text: &str) -> ImagefileError {
        match Imagefile::parse(text) {
            Ok(f) => panic!("expected an error for {text:?}, got {f:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn full_file_with_comments_and_continuation() {
        let f = Imagefile::parse(
            "# a VM\n\
             \n\
             from disk.qcow2          # the disk\n\
             FORMAT qcow2\n\
             ARCH amd64\n\
             KERNEL vmlinuz\n\
             INITRD initrd.img\n\
             CMDLINE console=ttyS0 \\\n\
             \x20       # a comment inside the continuation\n\
             \x20       root=/dev/vda1 \\\n\
             \x20       quiet            # trailing comment\n\
             LABEL a=1 \"b=two words\"\n\
             LABEL a=3\n",
        )
        .unwrap();
        assert_eq!(f.from.value, BaseDisk::File("disk.qcow2".into()));
        assert_eq!(f.from.line, 3);
        assert_eq!(f.format.as_ref().map(|s| s.value), Some(DiskFormat::Qcow2));
        assert_eq!(f.arch, Arch::X86_64);
        assert_eq!(f.kernel.as_ref().map(|k| k.value.as_str()), Some("vmlinuz"));
        assert_eq!(f.initrd.as_ref().map(|k| k.line), Some(7));
        assert_eq!(
            f.cmdline.as_deref(),
            Some("console=ttyS0 root=/dev/vda1 quiet")
        );
        assert_eq!(f.labels.get("a").map(String::as_str), Some("3"));
        assert_eq!(f.labels.get("b").map(String::as_str), Some("two words"));
    }

    #[test]
    fn minimal_disk_and_scratch() {
        let f = Imagefile::parse("FROM d.img").unwrap();
        assert_eq!(f.arch, Arch::X86_64);
        assert_eq!(f.format, None);
        let f = Imagefile::parse("FROM scratch\nKERNEL k\nARCH arm64\n").unwrap();
        assert_eq!(f.from.value, BaseDisk::Scratch);
        assert_eq!(f.arch, Arch::Aarch64);
    }

    #[test]
    fn errors_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("FROM a\nRUN make\n", 2, "unknown instruction RUN"),
            ("# only a comment\n\nARCH x86_64\n", 3, "missing FROM"),
            ("", 1, "missing FROM"),
            ("FROM a\nINITRD i\n", 2, "INITRD needs a KERNEL"),
            ("\nFROM scratch\n", 2, "needs a KERNEL"),
            (
                "FROM scratch\nKERNEL k\nFORMAT raw\n",
                3,
                "there is no disk",
            ),
            ("FROM a\nFROM b\n", 2, "given twice (first on line 1)"),
            ("FROM a b\n", 1, "exactly one argument"),
            ("FROM\n", 1, "FROM needs"),
            ("FROM a\nFORMAT vmdk\n", 2, "unknown disk format"),
            ("FROM a\nARCH riscv\n", 2, "unknown architecture"),
            ("FROM a\nLABEL novalue\n", 2, "not key=value"),
            ("FROM a\nLABEL \"open\n", 2, "unterminated"),
            ("FROM a\nCMDLINE quiet\n", 2, "CMDLINE needs a KERNEL"),
            (
                "FROM a\nKERNEL k\nCMDLINE \\\n",
                3,
                "continuation ends the file",
            ),
        ];
        for (text, line, msg) in cases {
            let e = perr(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(msg), "{text:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("Imagefile:{line}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn continuation_keeps_the_first_line_number() {
        let e = perr("FROM a\nKERNEL k\nBOGUS x \\\n  y\n");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn resolve_finds_files_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(ctx.join("disk.img"), vec![0u8; 1024]).unwrap();
        std::fs::write(ctx.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), ctx.join("link")).unwrap();
        std::fs::create_dir(ctx.join("sub")).unwrap();

        let r = Imagefile::parse("FROM disk.img\nKERNEL ./vmlinuz\n")
            .unwrap()
            .resolve(&ctx)
            .unwrap();
        let (disk, probe) = r.disk.unwrap();
        assert!(disk.ends_with("disk.img"));
        assert_eq!(probe.format, DiskFormat::Raw);
        assert_eq!(probe.virtual_size, 1024);
        assert!(r.kernel.unwrap().ends_with("vmlinuz"));

        let cases: &[(&str, usize, &str)] = &[
            ("FROM ../secret\n", 1, "leave the build context"),
            ("FROM disk.img\nKERNEL /etc/passwd\n", 2, "absolute paths"),
            (
                "FROM disk.img\n\nKERNEL link\n",
                3,
                "outside the build context",
            ),
            ("FROM missing.img\n", 1, "missing.img"),
            ("FROM sub\n", 1, "not a regular file"),
            ("FROM disk.img\nFORMAT qcow2\n", 2, "no qcow2 header"),
        ];
        for (text, line, msg) in cases {
            let e = Imagefile::parse(text).unwrap().resolve(&ctx).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(msg), "{text:?}: {e}");
        }
    }
}
