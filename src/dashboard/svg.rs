//! SVG pictures for the dashboard: the pipeline's DAG (`graph_svg`) and a run's timeline
//! (`gantt_svg`). Each returns a standalone SVG document built from plain data, ready to be
//! inlined in a page or served as `image/svg+xml`: no network, no scripts, no external fonts,
//! and the same input always gives the same bytes.

const MARGIN: f64 = 16.0;
/// Width of one character of the 13px system font, near enough to size boxes around names.
const CHAR_WIDTH: f64 = 7.5;
const TEXT_COLOUR: &str = "#1f2328";
const MUTED_TEXT: &str = "#57606a";
const GRID_COLOUR: &str = "#e5e7eb";
const EDGE_COLOUR: &str = "#8a9099";

const NODE_HEIGHT: f64 = 28.0;
const NODE_PADDING: f64 = 12.0;
const MIN_NODE_WIDTH: f64 = 48.0;
const ROW_PITCH: f64 = 60.0;
const COLUMN_GAP: f64 = 80.0;
const LEGEND_HEIGHT: f64 = 28.0;
const SWATCH_SIZE: f64 = 12.0;

const AXIS_HEIGHT: f64 = 24.0;
const ROW_HEIGHT: f64 = 24.0;
const BAR_HEIGHT: f64 = 16.0;
const PLOT_WIDTH: f64 = 720.0;
const MIN_BAR_WIDTH: f64 = 2.0;
const MIN_LABEL_WIDTH: f64 = 48.0;
const LABEL_GAP: f64 = 12.0;
/// Most intervals on the time axis: a step is the smallest nice one that keeps to this.
const MAX_TICK_INTERVALS: u64 = 6;

/// A stage's state as the dashboard colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    UpToDate,
    Dirty,
    Running,
    Failed,
    NeverRun,
}

impl NodeState {
    const ALL: [NodeState; 5] =
        [NodeState::UpToDate, NodeState::Dirty, NodeState::Running, NodeState::Failed, NodeState::NeverRun];

    fn kebab(self) -> &'static str {
        match self {
            NodeState::UpToDate => "up-to-date",
            NodeState::Dirty => "dirty",
            NodeState::Running => "running",
            NodeState::Failed => "failed",
            NodeState::NeverRun => "never-run",
        }
    }

    fn label(self) -> &'static str {
        match self {
            NodeState::UpToDate => "up to date",
            NodeState::Dirty => "dirty",
            NodeState::Running => "running",
            NodeState::Failed => "failed",
            NodeState::NeverRun => "never run",
        }
    }

    /// (fill, stroke): light fills keep the dark name text readable on every state.
    fn colours(self) -> (&'static str, &'static str) {
        match self {
            NodeState::UpToDate => ("#c9f0d3", "#2f9e55"),
            NodeState::Dirty => ("#fde7b0", "#c98a00"),
            NodeState::Running => ("#cfe3ff", "#2f6fdb"),
            NodeState::Failed => ("#f9c9c9", "#cf3a3a"),
            NodeState::NeverRun => ("#e4e6ea", "#8a9099"),
        }
    }
}

/// One stage of the DAG: its name, its state, and the indices (into the same slice) of the
/// stages it depends on.
#[derive(Debug, Clone)]
pub struct GraphNode {
    pub name: String,
    pub state: NodeState,
    pub upstream: Vec<usize>,
}

/// The DAG as a standalone SVG document (with width/height and a viewBox), left to right:
/// `topo` lists every node index, upstream before downstream.
pub fn graph_svg(nodes: &[GraphNode], topo: &[usize]) -> String {
    if nodes.is_empty() {
        return message_svg("dagrun-graph", "no stages");
    }
    let placement = place_nodes(nodes, topo);
    let node_width = node_width_for(nodes);
    let (legend, legend_width) = legend();
    let columns = placement.columns.len() as f64;
    let columns_width = columns * node_width + (columns - 1.0) * COLUMN_GAP;
    let width = 2.0 * MARGIN + columns_width.max(legend_width);
    let height = 2.0 * MARGIN + LEGEND_HEIGHT + placement.tallest as f64 * ROW_PITCH - (ROW_PITCH - NODE_HEIGHT);

    let mut svg = svg_open("dagrun-graph", width, height);
    svg.push_str(&arrow_marker());
    svg.push_str(&legend);
    // Edges first, so that nodes cover an edge that crosses a column on its way.
    svg.push_str(&edges_markup(&placement, node_width));
    for column in &placement.columns {
        for &node in column {
            let origin = placement.origin(node, node_width);
            svg.push_str(&node_markup(&nodes[node], origin, node_width));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The column of each node: 0 for a source, else 1 + the highest column of its upstream.
fn layers(nodes: &[GraphNode], topo: &[usize]) -> Vec<usize> {
    let mut layer = vec![0; nodes.len()];
    for node in drawing_order(nodes.len(), topo) {
        layer[node] =
            nodes[node].upstream.iter().filter(|&&up| up < nodes.len()).map(|&up| layer[up] + 1).max().unwrap_or(0);
    }
    layer
}

/// `topo` without unknown or repeated indices, then any node it left out: a malformed order
/// still draws every node once instead of panicking in the server.
fn drawing_order(node_count: usize, topo: &[usize]) -> Vec<usize> {
    let mut placed = vec![false; node_count];
    let mut order = Vec::with_capacity(node_count);
    for node in topo.iter().copied().chain(0..node_count) {
        if node < node_count && !placed[node] {
            placed[node] = true;
            order.push(node);
        }
    }
    order
}

/// Where each node goes: its column and its row within the column.
struct Placement {
    /// Each node's upstream, valid and without repeats.
    upstream: Vec<Vec<usize>>,
    layer: Vec<usize>,
    /// Row of each node, top to bottom; a shorter column is centred, so rows can be halves.
    slot: Vec<f64>,
    /// The nodes of each column, top to bottom.
    columns: Vec<Vec<usize>>,
    /// Rows in the tallest column.
    tallest: usize,
}

impl Placement {
    /// Top-left corner of a node's box.
    fn origin(&self, node: usize, node_width: f64) -> (f64, f64) {
        let x = MARGIN + self.layer[node] as f64 * (node_width + COLUMN_GAP);
        let y = MARGIN + LEGEND_HEIGHT + self.slot[node] * ROW_PITCH;
        (x, y)
    }
}

fn place_nodes(nodes: &[GraphNode], topo: &[usize]) -> Placement {
    let layer = layers(nodes, topo);
    let upstream = distinct_upstream(nodes);
    let downstream = downstream_of(&upstream);
    let mut columns = columns_by_layer(&drawing_order(nodes.len(), topo), &layer);
    let tallest = columns.iter().map(Vec::len).max().unwrap_or(0);
    let mut slot = vec![0.0; nodes.len()];
    for column in &columns {
        assign_slots(column, tallest, &mut slot);
    }
    order_within_layers(&mut columns, &upstream, &downstream, tallest, &mut slot);
    Placement { upstream, layer, slot, columns, tallest }
}

fn distinct_upstream(nodes: &[GraphNode]) -> Vec<Vec<usize>> {
    nodes
        .iter()
        .map(|node| {
            let mut upstream: Vec<usize> = node.upstream.iter().copied().filter(|&up| up < nodes.len()).collect();
            upstream.sort_unstable();
            upstream.dedup();
            upstream
        })
        .collect()
}

fn downstream_of(upstream: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut downstream = vec![Vec::new(); upstream.len()];
    for (node, ups) in upstream.iter().enumerate() {
        for &up in ups {
            downstream[up].push(node);
        }
    }
    downstream
}

/// The nodes of each layer, in drawing order.
fn columns_by_layer(order: &[usize], layer: &[usize]) -> Vec<Vec<usize>> {
    let count = layer.iter().max().map_or(0, |&last| last + 1);
    let mut columns = vec![Vec::new(); count];
    for &node in order {
        columns[layer[node]].push(node);
    }
    columns
}

fn assign_slots(column: &[usize], tallest: usize, slot: &mut [f64]) {
    let offset = (tallest - column.len()) as f64 / 2.0;
    for (row, &node) in column.iter().enumerate() {
        slot[node] = offset + row as f64;
    }
}

/// Barycenter heuristic against crossings: sweep left to right ordering each column by the
/// mean row of its upstream, right to left by its downstream, then left to right once more.
/// Each sweep is linear in nodes and edges, plus one sort per column.
fn order_within_layers(
    columns: &mut [Vec<usize>],
    upstream: &[Vec<usize>],
    downstream: &[Vec<usize>],
    tallest: usize,
    slot: &mut [f64],
) {
    let count = columns.len();
    let rightwards: Vec<usize> = (1..count).collect();
    let leftwards: Vec<usize> = (0..count.saturating_sub(1)).rev().collect();
    let sweeps = [(&rightwards, upstream), (&leftwards, downstream), (&rightwards, upstream)];
    for (visit, neighbours) in sweeps {
        for &layer in visit {
            reorder_by_barycenter(&mut columns[layer], neighbours, slot);
            assign_slots(&columns[layer], tallest, slot);
        }
    }
}

/// A node without neighbours on that side keeps its current row as its key; the sort is
/// stable, so ties keep the current order and the output stays deterministic.
fn reorder_by_barycenter(column: &mut [usize], neighbours: &[Vec<usize>], slot: &[f64]) {
    let mut keyed: Vec<(f64, usize)> = column
        .iter()
        .map(|&node| {
            let key = barycenter(&neighbours[node], slot).unwrap_or(slot[node]);
            (key, node)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (place, (_, node)) in column.iter_mut().zip(keyed) {
        *place = node;
    }
}

fn barycenter(neighbours: &[usize], slot: &[f64]) -> Option<f64> {
    if neighbours.is_empty() {
        return None;
    }
    let sum: f64 = neighbours.iter().map(|&node| slot[node]).sum();
    Some(sum / neighbours.len() as f64)
}

/// One width for every node, so that columns line up: the longest name fits.
fn node_width_for(nodes: &[GraphNode]) -> f64 {
    let longest = nodes.iter().map(|node| text_width(&node.name)).fold(0.0, f64::max);
    (longest + 2.0 * NODE_PADDING).max(MIN_NODE_WIDTH)
}

fn arrow_marker() -> String {
    format!(
        "<defs><marker id=\"dagrun-arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
         markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\">\
         <path d=\"M0 0 L10 5 L0 10 z\" fill=\"{EDGE_COLOUR}\"/></marker></defs>\n"
    )
}

/// A swatch and a label per state, in a row above the graph; returns the markup and its width.
fn legend() -> (String, f64) {
    let mut markup = String::from("<g class=\"legend\">");
    let mut x = MARGIN;
    for state in NodeState::ALL {
        let (fill, stroke) = state.colours();
        let label = state.label();
        markup.push_str(&format!(
            "<rect class=\"swatch state-{kebab}\" x=\"{sx}\" y=\"{sy}\" width=\"{size}\" \
             height=\"{size}\" rx=\"3\" fill=\"{fill}\" stroke=\"{stroke}\"/>\
             <text x=\"{tx}\" y=\"{ty}\" fill=\"{MUTED_TEXT}\">{label}</text>",
            kebab = state.kebab(),
            sx = num(x),
            sy = num(MARGIN + 1.0),
            size = num(SWATCH_SIZE),
            tx = num(x + SWATCH_SIZE + 6.0),
            ty = num(MARGIN + 11.5),
        ));
        x += SWATCH_SIZE + 6.0 + text_width(label) + 16.0;
    }
    markup.push_str("</g>\n");
    (markup, x - 16.0 - MARGIN)
}

fn edges_markup(placement: &Placement, node_width: f64) -> String {
    let mut markup = String::new();
    for (node, upstream) in placement.upstream.iter().enumerate() {
        let (to_x, to_y) = placement.origin(node, node_width);
        for &up in upstream {
            let (from_x, from_y) = placement.origin(up, node_width);
            let from = (from_x + node_width, from_y + NODE_HEIGHT / 2.0);
            let to = (to_x, to_y + NODE_HEIGHT / 2.0);
            markup.push_str(&edge_markup(from, to));
        }
    }
    markup
}

/// A cubic Bézier leaving `from` and entering `to` horizontally.
fn edge_markup(from: (f64, f64), to: (f64, f64)) -> String {
    // At least half a gap of bend, so that an edge pointing backwards still reads as a curve.
    let bend = ((to.0 - from.0) / 2.0).max(COLUMN_GAP / 2.0);
    format!(
        "<path class=\"edge\" d=\"M{x1} {y1} C{c1} {y1} {c2} {y2} {x2} {y2}\" fill=\"none\" \
         stroke=\"{EDGE_COLOUR}\" stroke-width=\"1.5\" marker-end=\"url(#dagrun-arrow)\"/>\n",
        x1 = num(from.0),
        y1 = num(from.1),
        c1 = num(from.0 + bend),
        c2 = num(to.0 - bend),
        x2 = num(to.0),
        y2 = num(to.1),
    )
}

fn node_markup(node: &GraphNode, (x, y): (f64, f64), width: f64) -> String {
    let name = escape_xml(&node.name);
    let state = node.state;
    let (fill, stroke) = state.colours();
    format!(
        "<g class=\"node state-{kebab}\" data-stage=\"{name}\"><title>{name}: {label}</title>\
         <rect x=\"{rx}\" y=\"{ry}\" width=\"{w}\" height=\"{h}\" rx=\"6\" fill=\"{fill}\" \
         stroke=\"{stroke}\" stroke-width=\"1.5\"/>\
         <text x=\"{tx}\" y=\"{ty}\" fill=\"{TEXT_COLOUR}\">{name}</text></g>\n",
        kebab = state.kebab(),
        label = state.label(),
        rx = num(x),
        ry = num(y),
        w = num(width),
        h = num(NODE_HEIGHT),
        tx = num(x + NODE_PADDING),
        ty = num(y + NODE_HEIGHT / 2.0 + 4.5),
    )
}

/// One stage execution of a run, for the timeline. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone)]
pub struct Bar {
    pub stage: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub status: String,
}

/// A run's timeline (Gantt chart) as a standalone SVG: one row per bar, in the order given,
/// x = time from the earliest start; a bar without `end_ms` is still running and ends at `now_ms`.
pub fn gantt_svg(bars: &[Bar], now_ms: i64) -> String {
    let Some(origin) = bars.iter().map(|bar| bar.start_ms).min() else {
        return message_svg("dagrun-gantt", "no stage ran in this run");
    };
    let spans: Vec<Span> = bars.iter().map(|bar| Span::of(bar, origin, now_ms)).collect();
    let axis = TimeAxis::covering(spans.iter().map(|span| span.end).max().unwrap_or(0));
    let label_width = bars.iter().map(|bar| text_width(&bar.stage)).fold(MIN_LABEL_WIDTH, f64::max) + LABEL_GAP;
    let plot_left = MARGIN + label_width;
    let rows_height = bars.len() as f64 * ROW_HEIGHT;
    // Two margins on the right: the last tick's label is centred on the end of the axis.
    let width = plot_left + PLOT_WIDTH + 2.0 * MARGIN;
    let height = MARGIN + AXIS_HEIGHT + rows_height + MARGIN;

    let mut svg = svg_open("dagrun-gantt", width, height);
    svg.push_str(&axis_markup(&axis, plot_left, rows_height));
    for (row, (bar, span)) in bars.iter().zip(&spans).enumerate() {
        svg.push_str(&row_markup(bar, *span, row, plot_left, &axis));
    }
    svg.push_str("</svg>\n");
    svg
}

/// A bar's time as milliseconds after the run's earliest start.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    end: u64,
}

impl Span {
    fn of(bar: &Bar, origin: i64, now_ms: i64) -> Span {
        let start = ms_after(origin, bar.start_ms);
        // A clock that stepped back gives a zero-length bar, not a negative one.
        let end = ms_after(origin, bar.end_ms.unwrap_or(now_ms)).max(start);
        Span { start, end }
    }
}

fn ms_after(origin: i64, ms: i64) -> u64 {
    u64::try_from(ms.saturating_sub(origin)).unwrap_or(0)
}

/// The time axis: from 0 to a whole number of steps covering the run.
struct TimeAxis {
    step_ms: u64,
    end_ms: u64,
}

impl TimeAxis {
    fn covering(span_ms: u64) -> TimeAxis {
        let step_ms = tick_step_ms(span_ms);
        let end_ms = span_ms.div_ceil(step_ms).max(1).saturating_mul(step_ms);
        TimeAxis { step_ms, end_ms }
    }

    fn ticks(&self) -> impl Iterator<Item = u64> {
        let step = self.step_ms;
        (0..=self.end_ms / step).map(move |index| index * step)
    }

    fn width(&self, ms: u64) -> f64 {
        ms as f64 * PLOT_WIDTH / self.end_ms as f64
    }
}

/// The smallest of 0.1, 0.2, 0.5, 1, 2, 5, 10, ... seconds that covers `span_ms` in at most
/// `MAX_TICK_INTERVALS` steps.
fn tick_step_ms(span_ms: u64) -> u64 {
    let mut scale: u64 = 100;
    loop {
        for mantissa in [1, 2, 5] {
            let step = scale.saturating_mul(mantissa);
            if step.saturating_mul(MAX_TICK_INTERVALS) >= span_ms {
                return step;
            }
        }
        scale = scale.saturating_mul(10);
    }
}

/// Ticks are whole multiples of 100 ms, so one decimal is exact.
fn seconds_label(ms: u64) -> String {
    let seconds = ms / 1000;
    let tenths = ms % 1000 / 100;
    if tenths == 0 { format!("{seconds}s") } else { format!("{seconds}.{tenths}s") }
}

fn axis_markup(axis: &TimeAxis, plot_left: f64, rows_height: f64) -> String {
    let top = MARGIN + AXIS_HEIGHT;
    let mut markup = String::from("<g class=\"axis\">");
    for tick in axis.ticks() {
        markup.push_str(&format!(
            "<line class=\"tick\" x1=\"{x}\" y1=\"{y1}\" x2=\"{x}\" y2=\"{y2}\" \
             stroke=\"{GRID_COLOUR}\"/>\
             <text class=\"tick-label\" x=\"{x}\" y=\"{ty}\" text-anchor=\"middle\" \
             fill=\"{MUTED_TEXT}\">{label}</text>",
            x = num(plot_left + axis.width(tick)),
            y1 = num(top - 4.0),
            y2 = num(top + rows_height),
            ty = num(MARGIN + 12.0),
            label = seconds_label(tick),
        ));
    }
    markup.push_str("</g>\n");
    markup
}

fn row_markup(bar: &Bar, span: Span, row: usize, plot_left: f64, axis: &TimeAxis) -> String {
    let top = MARGIN + AXIS_HEIGHT + row as f64 * ROW_HEIGHT;
    let stage = escape_xml(&bar.stage);
    let status = escape_xml(&bar.status);
    let seconds = (span.end - span.start) as f64 / 1000.0;
    format!(
        "<text class=\"stage\" x=\"{lx}\" y=\"{ly}\" fill=\"{TEXT_COLOUR}\">{stage}</text>\
         <rect class=\"bar status-{class}\" data-stage=\"{stage}\" x=\"{x}\" y=\"{y}\" \
         width=\"{w}\" height=\"{h}\" rx=\"3\" fill=\"{fill}\">\
         <title>{stage}: {status}, {seconds:.2}s</title></rect>\n",
        lx = num(MARGIN),
        ly = num(top + ROW_HEIGHT / 2.0 + 4.5),
        class = class_token(&bar.status),
        x = num(plot_left + axis.width(span.start)),
        y = num(top + (ROW_HEIGHT - BAR_HEIGHT) / 2.0),
        w = num(axis.width(span.end - span.start).max(MIN_BAR_WIDTH)),
        h = num(BAR_HEIGHT),
        fill = status_colour(&bar.status),
    )
}

fn status_colour(status: &str) -> &'static str {
    match status {
        "success" => "#2f9e55",
        "failed" | "timed_out" => "#cf3a3a",
        "interrupted" => "#e8850c",
        "running" => "#2f6fdb",
        // restored, accepted, cut_off, and anything newer than this file
        _ => "#9aa0a6",
    }
}

/// A status as one CSS class token: statuses are snake_case words, anything else becomes `-`.
fn class_token(status: &str) -> String {
    status.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect()
}

fn svg_open(class: &str, width: f64, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"{class}\" width=\"{w}\" \
         height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"system-ui, sans-serif\" \
         font-size=\"13\">\n",
        w = num(width),
        h = num(height),
    )
}

/// A small SVG holding one line of text, for a graph or a run with nothing to draw.
fn message_svg(class: &str, message: &str) -> String {
    let mut svg = svg_open(class, text_width(message) + 2.0 * MARGIN, 2.0 * MARGIN + 13.0);
    svg.push_str(&format!(
        "<text x=\"{x}\" y=\"{y}\" fill=\"{MUTED_TEXT}\">{text}</text>\n</svg>\n",
        x = num(MARGIN),
        y = num(MARGIN + 10.5),
        text = escape_xml(message),
    ));
    svg
}

fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_WIDTH
}

fn escape_xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// A coordinate with at most one decimal, and none when it is whole: `12`, `12.5`.
fn num(value: f64) -> String {
    // `as` saturates, and maps NaN to 0: a bad number still gives valid SVG.
    let tenths = (value * 10.0).round() as i64;
    let sign = if tenths < 0 { "-" } else { "" };
    let magnitude = tenths.unsigned_abs();
    let (whole, fraction) = (magnitude / 10, magnitude % 10);
    if fraction == 0 { format!("{sign}{whole}") } else { format!("{sign}{whole}.{fraction}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, state: NodeState, upstream: &[usize]) -> GraphNode {
        GraphNode { name: name.to_string(), state, upstream: upstream.to_vec() }
    }

    fn bar(stage: &str, start_ms: i64, end_ms: Option<i64>, status: &str) -> Bar {
        Bar { stage: stage.to_string(), start_ms, end_ms, status: status.to_string() }
    }

    /// Every tag closes in order, and the document is one `<svg>` element with a viewBox.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
        assert!(svg.contains(" viewBox=\"0 0 "), "{svg}");
        assert!(svg.ends_with("</svg>\n"), "{svg}");
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>').expect("a tag that never ends");
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "`<` inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "closing tag out of order");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().expect("a tag name"));
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed tags: {open:?}");
    }

    /// The value of the first `name="..."` attribute in `markup`.
    fn attribute<'a>(markup: &'a str, name: &str) -> &'a str {
        let key = format!(" {name}=\"");
        let start = markup.find(&key).expect("the attribute") + key.len();
        let length = markup[start..].find('"').expect("a closing quote");
        &markup[start..start + length]
    }

    /// Each node's name and the top-left corner of its box, in drawing order.
    fn node_boxes(svg: &str) -> Vec<(String, f64, f64)> {
        svg.split("data-stage=\"")
            .skip(1)
            .map(|rest| {
                let name = &rest[..rest.find('"').expect("a closing quote")];
                let x = attribute(rest, "x").parse().expect("a number");
                let y = attribute(rest, "y").parse().expect("a number");
                (name.to_string(), x, y)
            })
            .collect()
    }

    fn box_of(svg: &str, name: &str) -> (f64, f64) {
        let (_, x, y) = node_boxes(svg).into_iter().find(|(drawn, _, _)| drawn == name).expect("the node is drawn");
        (x, y)
    }

    #[test]
    fn layers_follow_the_longest_path_from_a_source() {
        // a -> b -> c, a -> c, d -> e, c -> e: e sits after c, not next to d
        let nodes = [
            node("a", NodeState::UpToDate, &[]),
            node("b", NodeState::UpToDate, &[0]),
            node("c", NodeState::UpToDate, &[0, 1]),
            node("d", NodeState::UpToDate, &[]),
            node("e", NodeState::UpToDate, &[3, 2]),
        ];
        assert_eq!(layers(&nodes, &[3, 0, 1, 2, 4]), [0, 1, 2, 0, 3]);
        assert_eq!(layers(&nodes, &[0, 1, 2, 3, 4]), [0, 1, 2, 0, 3]);
    }

    #[test]
    fn a_downstream_node_sits_level_with_its_upstream() {
        // sources a over b; x depends on b and y on a, but topo lists x first
        let nodes = [
            node("a", NodeState::UpToDate, &[]),
            node("b", NodeState::UpToDate, &[]),
            node("x", NodeState::Dirty, &[1]),
            node("y", NodeState::Dirty, &[0]),
        ];
        let svg = graph_svg(&nodes, &[0, 1, 2, 3]);
        let (_, y_of_y) = box_of(&svg, "y");
        let (_, y_of_x) = box_of(&svg, "x");
        assert!(y_of_y < y_of_x, "y should be drawn above x:\n{svg}");
        assert!((box_of(&svg, "a").1 - y_of_y).abs() < 0.1, "a and y share a row:\n{svg}");
    }

    #[test]
    fn names_are_escaped_in_the_svg() {
        let name = "a<b&\"c\"'";
        let escaped = "a&lt;b&amp;&quot;c&quot;&#39;";
        let graph = graph_svg(&[node(name, NodeState::Failed, &[])], &[0]);
        let gantt = gantt_svg(&[bar(name, 0, Some(1_000), "failed")], 1_000);
        for svg in [&graph, &gantt] {
            assert_well_formed(svg);
            assert!(svg.contains(escaped), "{svg}");
            assert!(!svg.contains("<b"), "{svg}");
        }
        assert!(graph.contains(&format!("<title>{escaped}: failed</title>")));
        assert!(gantt.contains(&format!("<title>{escaped}: failed, 1.00s</title>")));
    }

    #[test]
    fn each_node_and_edge_is_drawn_once() {
        // a diamond; d lists b twice, as parallel edges in the DAG would
        let nodes = [
            node("a", NodeState::UpToDate, &[]),
            node("b", NodeState::Dirty, &[0]),
            node("c", NodeState::Running, &[0]),
            node("d", NodeState::NeverRun, &[1, 2, 1]),
        ];
        let svg = graph_svg(&nodes, &[0, 1, 2, 3]);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("data-stage=").count(), 4);
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 4);
        for (name, state) in [("a", "up-to-date"), ("b", "dirty"), ("c", "running"), ("d", "never-run")] {
            let group = format!("<g class=\"node state-{state}\" data-stage=\"{name}\">");
            assert_eq!(svg.matches(&group).count(), 1, "{group}");
        }
    }

    #[test]
    fn a_two_thousand_node_chain_and_fan_draws_every_node_in_its_own_place() {
        // chain n0 -> n1 -> ... -> n999, and f{i} hangs off n{i}
        let mut nodes = Vec::new();
        for i in 0..1000 {
            let upstream: Vec<usize> = if i == 0 { Vec::new() } else { vec![i - 1] };
            nodes.push(node(&format!("n{i}"), NodeState::UpToDate, &upstream));
        }
        for i in 0..1000 {
            nodes.push(node(&format!("f{i}"), NodeState::Dirty, &[i]));
        }
        let topo: Vec<usize> = (0..nodes.len()).collect();

        let layer = layers(&nodes, &topo);
        assert_eq!(layer[999], 999);
        assert_eq!(layer[1000 + 999], 1000);

        let svg = graph_svg(&nodes, &topo);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 999 + 1000);
        let boxes = node_boxes(&svg);
        let mut drawn: Vec<&str> = boxes.iter().map(|(name, _, _)| name.as_str()).collect();
        drawn.sort_unstable();
        let mut expected: Vec<&str> = nodes.iter().map(|node| node.name.as_str()).collect();
        expected.sort_unstable();
        assert_eq!(drawn, expected);
        let mut corners: Vec<(i64, i64)> =
            boxes.iter().map(|&(_, x, y)| ((x * 10.0) as i64, (y * 10.0) as i64)).collect();
        corners.sort_unstable();
        corners.dedup();
        assert_eq!(corners.len(), 2000, "two nodes share a place");
    }

    #[test]
    fn a_running_bar_ends_now_and_bars_keep_the_order_given() {
        let bars = [bar("build", 1_000, Some(3_000), "success"), bar("train", 0, None, "running")];
        let svg = gantt_svg(&bars, 5_000);
        assert_well_formed(&svg);

        let success = &svg[svg.find("class=\"bar status-success\"").expect("a success bar")..];
        let running = &svg[svg.find("class=\"bar status-running\"").expect("a running bar")..];
        assert!(svg.find(">build<") < svg.find(">train<"), "{svg}");
        let row_of = |markup: &str| attribute(markup, "y").parse::<f64>().expect("a number");
        assert!(row_of(success) < row_of(running));

        // 0..5 s on a 720 px axis: train spans it all, build starts at 1 s and lasts 2 s
        assert_eq!(attribute(running, "width"), "720");
        assert!(running.contains("<title>train: running, 5.00s</title>"));
        // the name column is 48 + 12 px wide after the 16 px margin
        assert_eq!(attribute(running, "x"), "76");
        assert_eq!(attribute(success, "x"), "220");
        assert_eq!(attribute(success, "width"), "288");
        assert!(success.contains("<title>build: success, 2.00s</title>"));
        assert!(svg.contains(">5s</text>"), "{svg}");
    }

    #[test]
    fn a_zero_length_bar_is_still_visible() {
        let svg = gantt_svg(&[bar("cached", 7_000, Some(7_000), "restored")], 9_000);
        assert_well_formed(&svg);
        let restored = &svg[svg.find("class=\"bar status-restored\"").expect("a bar")..];
        assert_eq!(attribute(restored, "width"), "2");
        assert!(restored.contains("<title>cached: restored, 0.00s</title>"));
    }

    #[test]
    fn an_empty_graph_and_an_empty_run_are_valid_svg() {
        let graph = graph_svg(&[], &[]);
        assert_well_formed(&graph);
        assert!(graph.contains(">no stages</text>"), "{graph}");
        let gantt = gantt_svg(&[], 0);
        assert_well_formed(&gantt);
        assert!(gantt.contains(">no stage ran in this run</text>"), "{gantt}");
    }

    #[test]
    fn tick_steps_are_nice_and_cover_the_run_in_six_or_fewer() {
        assert_eq!(tick_step_ms(0), 100);
        assert_eq!(tick_step_ms(250), 100);
        assert_eq!(tick_step_ms(601), 200);
        assert_eq!(tick_step_ms(5_000), 1_000);
        assert_eq!(tick_step_ms(59_000), 10_000);
        assert_eq!(tick_step_ms(3_600_000), 1_000_000);
        assert_eq!(tick_step_ms(u64::MAX / 2), 2_000_000_000_000_000_000);
        assert_eq!(seconds_label(0), "0s");
        assert_eq!(seconds_label(1_500), "1.5s");
        assert_eq!(seconds_label(20_000), "20s");
    }

    #[test]
    fn numbers_have_at_most_one_decimal() {
        assert_eq!(num(12.0), "12");
        assert_eq!(num(121.5), "121.5");
        assert_eq!(num(1.26), "1.3");
        assert_eq!(num(-0.04), "0");
        assert_eq!(num(-2.5), "-2.5");
        assert_eq!(num(f64::NAN), "0");
    }

    #[test]
    fn the_same_graph_gives_the_same_bytes() {
        let nodes = [
            node("a", NodeState::UpToDate, &[]),
            node("b", NodeState::Failed, &[0]),
            node("c", NodeState::Dirty, &[0]),
            node("d", NodeState::NeverRun, &[2, 1]),
        ];
        assert_eq!(graph_svg(&nodes, &[0, 1, 2, 3]), graph_svg(&nodes, &[0, 1, 2, 3]));
    }
}
