//! What a chaos run writes: one CSV row per second of the workload and an SVG chart of the
//! throughput with every fault marked, drawn by hand (a few hundred lines of SVG need no plotting
//! library).

use std::fmt::Write as _;

use super::faults::FaultKind;

/// The workload's input and output during one second `[second, second + 1)` of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecondSample {
    pub second: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub operations: u64,
    /// Faults were confined to one bank (the cluster was not yet healthy again) at the sample.
    pub disturbed: bool,
}

impl SecondSample {
    pub fn throughput_bytes(&self) -> u64 {
        self.read_bytes + self.written_bytes
    }
}

/// One injected fault, where the chart and the CSV need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMark {
    /// Since the workload started.
    pub at_ms: u64,
    pub kind: FaultKind,
    pub bank: usize,
    /// The server's position in its bank.
    pub slot: usize,
    pub within_envelope: bool,
    pub succeeded: bool,
}

impl FaultMark {
    pub fn label(&self) -> String {
        format!("{} b{}s{}", self.kind.name(), self.bank, self.slot)
    }
}

pub const CSV_HEADER: &str = "second,throughput_bytes_per_second,read_bytes_per_second,\
written_bytes_per_second,operations_per_second,cluster_disturbed,fault_kind,fault_bank,\
fault_server,fault_at_ms";

/// One row per second; a fault goes on the row of the second it started in (several in one
/// second are joined with `;`).
pub fn render_csv(samples: &[SecondSample], faults: &[FaultMark]) -> String {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    let last_row = samples.len().saturating_sub(1) as u64;
    for sample in samples {
        let here: Vec<&FaultMark> = faults
            .iter()
            .filter(|fault| (fault.at_ms / 1000).min(last_row) == sample.second)
            .collect();
        let join = |field: &dyn Fn(&FaultMark) -> String| {
            here.iter()
                .map(|fault| field(fault))
                .collect::<Vec<_>>()
                .join(";")
        };
        let _ = writeln!(
            text,
            "{},{},{},{},{},{},{},{},{},{}",
            sample.second,
            sample.throughput_bytes(),
            sample.read_bytes,
            sample.written_bytes,
            sample.operations,
            sample.disturbed,
            join(&|fault| fault.kind.name().to_string()),
            join(&|fault| fault.bank.to_string()),
            join(&|fault| fault.slot.to_string()),
            join(&|fault| fault.at_ms.to_string()),
        );
    }
    text
}

/// The colour of a kind's marker.
pub fn colour(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Kill => "#d62728",
        FaultKind::RestartEmpty => "#9467bd",
        FaultKind::Corrupt => "#ff7f0e",
        FaultKind::Pause => "#2ca02c",
    }
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;
const MEBIBYTE: f64 = 1024.0 * 1024.0;

/// A step of 1, 2 or 5 times a power of ten that cuts `0..=maximum` into about `ticks` parts.
fn tick_step(maximum: f64, ticks: f64) -> f64 {
    if maximum <= 0.0 {
        return 1.0;
    }
    let raw = maximum / ticks;
    let power = 10f64.powf(raw.log10().floor());
    let multiple = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|multiple| multiple * power >= raw)
        .unwrap_or(10.0);
    multiple * power
}

/// The smallest multiple of `step` at or above `value` (and above zero).
fn round_up(value: f64, step: f64) -> f64 {
    ((value / step).ceil() * step).max(step)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn format_tick(value: f64) -> String {
    if value == value.trunc() {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The chart: throughput (MiB/s, left axis) and operations per second (right axis) over time,
/// seconds when the cluster was disturbed shaded, and a labelled vertical line per fault in its
/// kind's colour.
pub fn render_svg(samples: &[SecondSample], faults: &[FaultMark], title: &str) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let seconds = (samples.len() as f64).max(1.0);
    let x_step = tick_step(seconds, 10.0);
    let x_maximum = round_up(seconds, x_step);
    let throughput_maximum = samples
        .iter()
        .map(|sample| sample.throughput_bytes() as f64 / MEBIBYTE)
        .fold(0.0, f64::max);
    let y_step = tick_step(throughput_maximum, 5.0);
    let y_maximum = round_up(throughput_maximum, y_step);
    let operations_maximum = samples
        .iter()
        .map(|sample| sample.operations as f64)
        .fold(0.0, f64::max);
    let operations_step = tick_step(operations_maximum, 5.0);
    let operations_top = round_up(operations_maximum, operations_step);
    let x_of = |second: f64| LEFT + second / x_maximum * plot_width;
    let y_of = |value: f64, top: f64| TOP + plot_height - value / top * plot_height;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Seconds in which faults were confined to one bank: the cluster was healing.
    for sample in samples.iter().filter(|sample| sample.disturbed) {
        let x = x_of(sample.second as f64);
        let _ = writeln!(
            svg,
            r##"<rect class="disturbed" x="{x:.1}" y="{TOP}" width="{:.1}" height="{plot_height}" fill="#000000" fill-opacity="0.06"/>"##,
            x_of(sample.second as f64 + 1.0) - x
        );
    }

    // Axes, grid and tick labels.
    let bottom = TOP + plot_height;
    let _ = writeln!(
        svg,
        r##"<g stroke="#888888" stroke-width="1"><line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/><line x1="{0}" y1="{TOP}" x2="{0}" y2="{bottom}"/></g>"##,
        LEFT + plot_width
    );
    let mut tick = 0.0;
    while tick <= x_maximum + x_step / 2.0 {
        let x = x_of(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{:.1}" stroke="#888888"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 18.0,
            format_tick(tick)
        );
        tick += x_step;
    }
    let mut tick = 0.0;
    while tick <= y_maximum + y_step / 2.0 {
        let y = y_of(tick, y_maximum);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0,
            format_tick(tick)
        );
        tick += y_step;
    }
    let mut tick = 0.0;
    while tick <= operations_top + operations_step / 2.0 {
        let y = y_of(tick, operations_top);
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#7f7f7f">{}</text>"##,
            LEFT + plot_width + 6.0,
            y + 4.0,
            format_tick(tick)
        );
        tick += operations_step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the workload started (s)</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 15.0
    );
    let middle = TOP + plot_height / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{middle:.1}" text-anchor="middle" transform="rotate(-90 20 {middle:.1})">throughput (MiB/s, read + written)</text>"#
    );
    let right_label_x = WIDTH - 20.0;
    let _ = writeln!(
        svg,
        r##"<text x="{right_label_x:.1}" y="{middle:.1}" text-anchor="middle" fill="#7f7f7f" transform="rotate(90 {right_label_x:.1} {middle:.1})">operations per second</text>"##
    );

    // The two series, each point in the middle of its second.
    let points = |value: &dyn Fn(&SecondSample) -> f64, top: f64| {
        samples
            .iter()
            .map(|sample| {
                format!(
                    "{:.1},{:.1}",
                    x_of(sample.second as f64 + 0.5),
                    y_of(value(sample), top)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if operations_maximum > 0.0 {
        let _ = writeln!(
            svg,
            r##"<polyline class="operations" fill="none" stroke="#7f7f7f" stroke-width="1" stroke-dasharray="2 2" points="{}"/>"##,
            points(&|sample| sample.operations as f64, operations_top)
        );
    }
    let _ = writeln!(
        svg,
        r##"<polyline class="throughput" fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        points(
            &|sample| sample.throughput_bytes() as f64 / MEBIBYTE,
            y_maximum
        )
    );

    // Faults: a line from top to bottom, labelled along it.
    for fault in faults {
        let x = x_of(fault.at_ms as f64 / 1000.0);
        let kind = fault.kind.name();
        let label = fault.label()
            + if fault.within_envelope {
                ""
            } else {
                " (beyond)"
            }
            + if fault.succeeded { "" } else { " (failed)" };
        let _ = writeln!(
            svg,
            r#"<g class="fault {kind}"><title>{} at {:.1} s</title><line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="{}" stroke-width="1.5" stroke-dasharray="5 3"/><text x="{:.1}" y="{:.1}" fill="{1}" font-size="11" transform="rotate(-90 {3:.1} {4:.1})" text-anchor="end">{}</text></g>"#,
            escape(&label),
            fault.at_ms as f64 / 1000.0,
            colour(fault.kind),
            x - 3.0,
            TOP + 4.0,
            escape(&label),
        );
    }

    // Legend, above the plot: (colour, dash pattern or "" for a shaded box, text).
    let mut entries: Vec<(&str, &str, &str)> = vec![("#1f77b4", "none", "MiB/s")];
    if operations_maximum > 0.0 {
        entries.push(("#7f7f7f", "2 2", "ops/s"));
    }
    for kind in FaultKind::ALL {
        entries.push((colour(kind), "5 3", kind.name()));
    }
    entries.push(("#000000", "", "healing (faults kept to one bank)"));
    let legend_y = 45.0;
    let mut x = LEFT;
    for (colour, dash, text) in entries {
        if dash.is_empty() {
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="16" height="10" fill="{colour}" fill-opacity="0.12"/>"#,
                legend_y - 5.0
            );
        } else {
            let _ = write!(
                svg,
                r#"<line x1="{x:.1}" y1="{legend_y}" x2="{:.1}" y2="{legend_y}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                x + 16.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 22.0,
            legend_y + 4.0,
            escape(text)
        );
        x += 30.0 + text.len() as f64 * 7.0;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<SecondSample> {
        (0..6)
            .map(|second| SecondSample {
                second,
                read_bytes: second * 1024 * 1024,
                written_bytes: 512 * 1024,
                operations: 100 + second,
                disturbed: (2..4).contains(&second),
            })
            .collect()
    }

    fn faults() -> Vec<FaultMark> {
        vec![
            FaultMark {
                at_ms: 2_100,
                kind: FaultKind::Kill,
                bank: 1,
                slot: 0,
                within_envelope: true,
                succeeded: true,
            },
            FaultMark {
                at_ms: 2_900,
                kind: FaultKind::Corrupt,
                bank: 1,
                slot: 1,
                within_envelope: true,
                succeeded: true,
            },
            FaultMark {
                at_ms: 4_000,
                kind: FaultKind::RestartEmpty,
                bank: 2,
                slot: 1,
                within_envelope: false,
                succeeded: false,
            },
            // After the last row: it goes on the last row.
            FaultMark {
                at_ms: 9_000,
                kind: FaultKind::Pause,
                bank: 0,
                slot: 0,
                within_envelope: true,
                succeeded: true,
            },
        ]
    }

    #[test]
    fn the_csv_has_one_row_per_second_and_every_fault() {
        let csv = render_csv(&samples(), &faults());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[1], "0,524288,0,524288,100,false,,,,");
        assert_eq!(
            lines[3],
            "2,2621440,2097152,524288,102,true,kill;corrupt,1;1,0;1,2100;2900"
        );
        assert_eq!(
            lines[5],
            "4,4718592,4194304,524288,104,false,restart-empty,2,1,4000"
        );
        assert!(lines[6].ends_with(",pause,0,0,9000"), "{}", lines[6]);
        for line in &lines {
            assert_eq!(line.split(',').count(), 10, "{line}");
        }
    }

    #[test]
    fn the_chart_marks_every_fault_in_its_colour_and_labels_the_axes() {
        let svg = render_svg(&samples(), &faults(), "votefs chaos <fsx>");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("votefs chaos &lt;fsx&gt;"));
        assert_eq!(svg.matches("<g class=\"fault ").count(), 4);
        for (kind, label) in [
            ("kill", "kill b1s0"),
            ("corrupt", "corrupt b1s1"),
            ("restart-empty", "restart-empty b2s1 (beyond) (failed)"),
            ("pause", "pause b0s0"),
        ] {
            assert!(
                svg.contains(&format!("<g class=\"fault {kind}\">")),
                "{kind}"
            );
            assert!(svg.contains(label), "{label}");
        }
        assert!(svg.contains(colour(FaultKind::Kill)));
        assert!(svg.contains("time since the workload started (s)"));
        assert!(svg.contains("throughput (MiB/s, read + written)"));
        assert!(svg.contains("operations per second"));
        assert_eq!(svg.matches("class=\"disturbed\"").count(), 2);
        assert!(svg.contains("class=\"throughput\""));
    }

    #[test]
    fn an_empty_run_still_draws() {
        let svg = render_svg(&[], &[], "nothing");
        assert!(svg.contains("</svg>"));
        assert_eq!(render_csv(&[], &[]).lines().count(), 1);
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(tick_step(300.0, 10.0), 50.0);
        assert_eq!(tick_step(7.3, 5.0), 2.0);
        assert_eq!(tick_step(0.0, 5.0), 1.0);
        assert_eq!(round_up(7.3, 2.0), 8.0);
        assert_eq!(round_up(0.0, 2.0), 2.0);
    }
}
