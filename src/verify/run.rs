//! The driver: feeds one stream of operations to a reference and to a target and collects every
//! divergence with the index of the operation that showed it. Callers plug in their own target
//! (the simulator's file system, a FUSE mount through [`super::real_directory`]).

use std::collections::BTreeMap;
use std::fmt;

use super::compare::{compare, ComparisonOptions, Divergence};
use super::model::Model;
use super::operation::{Errno, Operation, Response, Timestamp};

/// Divergent operations kept in a report; later ones are only counted (once a target diverges,
/// its state differs and most later operations diverge too).
pub const REPORTED_DIVERGENT_OPERATIONS: usize = 100;

/// The operation at `index` (counting from 0) and the fields on which the target disagreed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DivergentOperation {
    pub index: usize,
    pub operation: Operation,
    pub divergences: Vec<Divergence>,
    /// Both whole responses, for the report.
    pub reference_response: Response,
    pub target_response: Response,
}

/// What a run found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Operations applied.
    pub operations: usize,
    /// Operations the reference answered with success.
    pub reference_successes: usize,
    /// How often the reference answered each errno (shows whether a workload reached its error
    /// paths).
    pub reference_errors: BTreeMap<Errno, usize>,
    /// All operations that diverged, counted.
    pub divergent_operation_count: usize,
    /// The first [`REPORTED_DIVERGENT_OPERATIONS`] of them, in order.
    pub divergent_operations: Vec<DivergentOperation>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.divergent_operation_count == 0
    }

    pub fn first_divergence(&self) -> Option<&DivergentOperation> {
        self.divergent_operations.first()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "{} operations, {} succeeded on the reference, {} diverged",
            self.operations, self.reference_successes, self.divergent_operation_count
        )?;
        for divergent in self.divergent_operations.iter().take(10) {
            writeln!(
                formatter,
                "  operation {}: {}",
                divergent.index, divergent.operation
            )?;
            for divergence in &divergent.divergences {
                writeln!(formatter, "    {divergence}")?;
            }
        }
        Ok(())
    }
}

/// Applies each operation to `reference` and then to `target`, and compares the responses.
pub fn run(
    mut reference: impl FnMut(&Operation) -> Response,
    mut target: impl FnMut(&Operation) -> Response,
    operations: impl IntoIterator<Item = Operation>,
    options: &ComparisonOptions,
) -> Report {
    collect(operations, options, |operation| {
        (reference(operation), target(operation))
    })
}

/// [`run`] with the reference model as the reference. `clock` is the target's clock, read just
/// before and just after each operation; the model is told the operation happened halfway, so
/// that a target that takes a while (a journal commit, simulated network delays) still stamps
/// times within the tolerance of the model's.
pub fn run_against(
    model: &mut Model,
    mut clock: impl FnMut() -> Timestamp,
    mut target: impl FnMut(&Operation) -> Response,
    operations: impl IntoIterator<Item = Operation>,
    options: &ComparisonOptions,
) -> Report {
    collect(operations, options, |operation| {
        let before = clock();
        let actual = target(operation);
        let after = clock();
        let expected = model.apply(operation, before.midpoint(after));
        (expected, actual)
    })
}

/// Runs every operation through `apply`, which returns the expected and the actual response.
fn collect(
    operations: impl IntoIterator<Item = Operation>,
    options: &ComparisonOptions,
    mut apply: impl FnMut(&Operation) -> (Response, Response),
) -> Report {
    let mut report = Report::default();
    for (index, operation) in operations.into_iter().enumerate() {
        let (expected, actual) = apply(&operation);
        report.operations += 1;
        match &expected {
            Ok(_) => report.reference_successes += 1,
            Err(errno) => *report.reference_errors.entry(*errno).or_insert(0) += 1,
        }
        let divergences = compare(&operation, &expected, &actual, options);
        if divergences.is_empty() {
            continue;
        }
        report.divergent_operation_count += 1;
        if report.divergent_operations.len() < REPORTED_DIVERGENT_OPERATIONS {
            report.divergent_operations.push(DivergentOperation {
                index,
                operation,
                divergences,
                reference_response: expected,
                target_response: actual,
            });
        }
    }
    report
}
