//! `votefs tee` (DESIGN §9): the same file-system operations on a reference directory and on a
//! target (a votefs mount), every response compared by field class with the same code the
//! simulator uses ([`crate::verify`]). Command-line glue: the replicated core never calls it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::verify::compare::ComparisonOptions;
use crate::verify::generate::Generator;
use crate::verify::operation::Operation;
use crate::verify::real_directory::RealDirectory;
use crate::verify::run::{run, Report};

/// Where the operations come from.
pub enum Source {
    /// `count` operations from the seeded generator.
    Generated { seed: u64, count: usize },
    /// A trace written by `--record` (one JSON operation per line).
    Replay(PathBuf),
}

pub struct TeeOptions {
    pub reference: PathBuf,
    pub target: PathBuf,
    pub source: Source,
    /// Write the operations applied to this file, one JSON object per line.
    pub record: Option<PathBuf>,
    /// Make the target a copy of the reference first.
    pub sync: bool,
    /// Where to write the operations up to the first divergence, if any.
    pub divergence_trace: PathBuf,
}

/// What a run found, and where the replay file of its first divergence is.
pub struct TeeOutcome {
    pub report: Report,
    /// False when either tree is mounted `noatime`.
    pub compared_access_times: bool,
    pub divergence_trace: Option<PathBuf>,
}

fn read_trace(path: &Path) -> Result<Vec<Operation>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the trace {}", path.display()))?;
    let mut operations = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let operation = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {}: not an operation written by --record",
                path.display(),
                number + 1
            )
        })?;
        operations.push(operation);
    }
    Ok(operations)
}

fn write_trace(path: &Path, operations: &[Operation]) -> Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path)
            .with_context(|| format!("cannot create the trace {}", path.display()))?,
    );
    for operation in operations {
        serde_json::to_writer(&mut file, operation)?;
        file.write_all(b"\n")?;
    }
    file.flush()
        .with_context(|| format!("cannot write the trace {}", path.display()))
}

/// Make `target` hold what `reference` holds: its entries are removed, then the reference's
/// directories, files (contents and modes) and symbolic links are copied in.
fn synchronise(reference: &Path, target: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(target).with_context(|| format!("cannot list {}", target.display()))?
    {
        let path = entry?.path();
        let metadata = std::fs::symlink_metadata(&path)?;
        if metadata.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(|| format!("cannot remove {}", path.display()))?;
    }
    copy_tree(reference, target)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))?
    {
        let entry = entry?;
        let source = entry.path();
        let destination = to.join(entry.file_name());
        let metadata = std::fs::symlink_metadata(&source)?;
        if metadata.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &destination)?;
        } else if metadata.is_dir() {
            std::fs::create_dir(&destination)?;
            copy_tree(&source, &destination)?;
            std::fs::set_permissions(
                &destination,
                std::fs::Permissions::from_mode(metadata.permissions().mode()),
            )?;
        } else if metadata.is_file() {
            std::fs::copy(&source, &destination)
                .with_context(|| format!("cannot copy {}", source.display()))?;
        } else {
            bail!(
                "{} is neither a file, a directory nor a symbolic link: --sync copies only those",
                source.display()
            );
        }
    }
    Ok(())
}

fn open_tree(path: &Path, role: &str) -> Result<RealDirectory> {
    if !path.is_dir() {
        bail!(
            "the {role} {} is not a directory (create it, or check the path)",
            path.display()
        );
    }
    RealDirectory::open(path).with_context(|| format!("cannot open the {role} {}", path.display()))
}

/// Whether the file system holding `path` is mounted `noatime`: reads there never update access
/// times, so they cannot agree with a tree whose reads do.
fn mounted_noatime(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed statvfs the call fills; the result is checked.
    let mut status: libc::statvfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut status) };
    result == 0 && status.f_flag & libc::ST_NOATIME != 0
}

/// Apply the operations to both trees and compare every response.
pub fn tee(options: &TeeOptions) -> Result<TeeOutcome> {
    let reference = open_tree(&options.reference, "reference")?;
    let target = open_tree(&options.target, "target")?;
    if options.sync {
        synchronise(&options.reference, &options.target)?;
    }
    let operations: Vec<Operation> = match &options.source {
        Source::Replay(path) => read_trace(path)?,
        Source::Generated { seed, count } => {
            let mut generator = Generator::new(*seed);
            (0..*count).map(|_| generator.next_operation()).collect()
        }
    };
    if let Some(path) = &options.record {
        write_trace(path, &operations)?;
    }
    let compare_access_times =
        !mounted_noatime(&options.reference) && !mounted_noatime(&options.target);
    let report = run(
        |operation| reference.apply(operation),
        |operation| target.apply(operation),
        operations.iter().cloned(),
        &ComparisonOptions {
            compare_access_times,
            ..ComparisonOptions::default()
        },
    );
    let divergence_trace = match report.first_divergence() {
        Some(first) => {
            // The shortest prefix known to show the divergence: everything up to it.
            write_trace(&options.divergence_trace, &operations[..=first.index])?;
            Some(options.divergence_trace.clone())
        }
        None => None,
    };
    Ok(TeeOutcome {
        report,
        compared_access_times: compare_access_times,
        divergence_trace,
    })
}

/// The report for people: totals, then each divergent operation with both responses.
pub fn render(outcome: &TeeOutcome) -> String {
    let report = &outcome.report;
    let mut text = format!(
        "{} operations, {} succeeded on the reference, {} diverged\n",
        report.operations, report.reference_successes, report.divergent_operation_count
    );
    if !outcome.compared_access_times {
        text.push_str("access times not compared: a tree is mounted noatime\n");
    }
    for divergent in &report.divergent_operations {
        text.push_str(&format!(
            "operation {}: {}\n  reference: {:?}\n  target:    {:?}\n",
            divergent.index,
            divergent.operation,
            divergent.reference_response,
            divergent.target_response
        ));
        for divergence in &divergent.divergences {
            text.push_str(&format!("  {divergence}\n"));
        }
    }
    if report.divergent_operation_count > report.divergent_operations.len() {
        text.push_str(&format!(
            "({} more divergent operations not shown)\n",
            report.divergent_operation_count - report.divergent_operations.len()
        ));
    }
    if let Some(path) = &outcome.divergence_trace {
        text.push_str(&format!(
            "replay the first divergence: votefs tee --reference REF --target TARGET --replay {}\n",
            path.display()
        ));
    }
    text
}
