//! Soak runner: `cargo run -p votefs-sim --release -- --seeds 100000 [--seed-start S] [--jobs 2]
//! [--operations 200] [--planted NAME]`. Prints a progress line and a summary with the replay
//! command of every failure.

#[cfg(not(madsim))]
fn main() {}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    soak::main()
}

#[cfg(madsim)]
mod soak {
    use std::io::Write;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use votefs::planted::PlantedBug;
    use votefs_sim::schedule::SweepShape;
    use votefs_sim::sweep::{describe_failures, faults_by_kind, sweep};

    struct Arguments {
        seeds: u64,
        seed_start: u64,
        jobs: usize,
        operations: u64,
        planted: Option<PlantedBug>,
    }

    const USAGE: &str = "usage: votefs-sim [--seeds N] [--seed-start S] [--jobs J] [--operations N] [--planted VoteAcceptsOneAnswer|SkipWriteBack|ServerAcceptsOlderVersion]";

    fn parse() -> Result<Arguments, String> {
        let mut arguments = Arguments {
            seeds: 1000,
            seed_start: 0,
            jobs: 2,
            operations: SweepShape::default().operations,
            planted: None,
        };
        let mut words = std::env::args().skip(1);
        while let Some(flag) = words.next() {
            let mut value = || {
                words
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            let number = |text: String| {
                text.parse::<u64>()
                    .map_err(|_| format!("{flag} takes a whole number, not {text:?}\n{USAGE}"))
            };
            match flag.as_str() {
                "--seeds" => arguments.seeds = number(value()?)?,
                "--seed-start" => arguments.seed_start = number(value()?)?,
                "--jobs" => arguments.jobs = number(value()?)?.clamp(1, 64) as usize,
                "--operations" => arguments.operations = number(value()?)?.max(1),
                "--planted" => {
                    let name = value()?;
                    arguments.planted = Some(
                        PlantedBug::ALL
                            .into_iter()
                            .find(|bug| format!("{bug:?}") == name)
                            .ok_or_else(|| format!("no planted bug is called {name}\n{USAGE}"))?,
                    );
                }
                "--help" | "-h" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(arguments)
    }

    pub fn main() -> ExitCode {
        let arguments = match parse() {
            Ok(arguments) => arguments,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
        };
        let shape = SweepShape {
            operations: arguments.operations,
            ..SweepShape::default()
        };
        let failures = AtomicUsize::new(0);
        let progress = |done: usize, total: usize| {
            let width = 40;
            let filled = done * width / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total} schedules",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
            let _ = &failures;
        };
        let start = arguments.seed_start;
        let result = sweep(
            start..start + arguments.seeds,
            &shape,
            arguments.planted,
            arguments.jobs,
            false,
            &progress,
        );
        failures.store(result.failures().len(), Ordering::Relaxed);
        eprintln!();
        println!("{}", result.summary());
        println!("faults by kind:");
        for (kind, count) in faults_by_kind(&result) {
            println!("  {count:>9}  {kind}");
        }
        if result.failures().is_empty() {
            ExitCode::SUCCESS
        } else {
            println!("{}", describe_failures(&result));
            ExitCode::FAILURE
        }
    }
}
