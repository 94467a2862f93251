//! Patches: how a pass says what to change, and [`apply_patch`], the one place where it is changed.
//!
//! As in tract, a pass never edits the graph it is looking at. It returns a [`Patch`]: nodes to
//! remove, nodes and initializers to add, and shunts ("replace every use of value A by value B").
//! `apply_patch` then rebuilds the graph in one go: renames, sorts the nodes topologically, drops nodes
//! whose outputs nobody uses and initializers nobody reads, and checks that every value read is defined.
//! If the check fails the model is left untouched.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::OnnxModel;
use super::graph::{GraphIndex, outer_references};
use super::proto::onnx::{GraphProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto};
use crate::{Error, Result};

/// A set of changes to the main graph, built by a pass against a [`GraphIndex`].
///
/// Node indices refer to `graph.node` as the pass saw it.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    removed: BTreeSet<usize>,
    added: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    shunts: Vec<(String, String)>,
    value_infos: Vec<ValueInfoProto>,
    opsets: Vec<(String, i64)>,
    rewrites: usize,
    names: HashSet<String>,
}

impl Patch {
    pub fn new() -> Self {
        Patch::default()
    }

    /// Removes node `index`. Its outputs must be shunted or produced again by an added node if anything
    /// still reads them.
    pub fn remove_node(&mut self, index: usize) {
        self.removed.insert(index);
    }

    /// True when node `index` is already removed by this patch: matchers skip such nodes so that two
    /// rewrites in one patch never claim the same node.
    pub fn is_removed(&self, index: usize) -> bool {
        self.removed.contains(&index)
    }

    /// Adds a node. It may reuse the output name of a removed node (a replacement); its place in the
    /// node list is found by the topological sort.
    pub fn add_node(&mut self, node: NodeProto) {
        for o in &node.output {
            self.names.insert(o.clone());
        }
        self.added.push(node);
    }

    /// Adds an initializer; one with the same name is replaced (how a pass rewrites weights).
    pub fn add_initializer(&mut self, tensor: TensorProto) {
        self.names.insert(tensor.name().to_string());
        self.initializers.retain(|t| t.name() != tensor.name());
        self.initializers.push(tensor);
    }

    /// Replaces every use of value `from` (node inputs, subgraph reads, graph outputs) by `to`.
    ///
    /// Shunts chain: `a -> b` and `b -> c` send `a` to `c`. A graph output keeps its name: its producer
    /// is renamed when possible, else an `Identity` is inserted (see [`GraphIndex::can_shunt`]).
    pub fn shunt(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.shunts.push((from.into(), to.into()));
    }

    /// Sets the value info of a graph input, output or intermediate value (replacing the entry with the
    /// same name), e.g. when a pass changes an element type.
    pub fn set_value_info(&mut self, info: ValueInfoProto) {
        self.value_infos.retain(|v| v.name() != info.name());
        self.value_infos.push(info);
    }

    /// Declares that added nodes need operator set `domain` at `version` or later (e.g.
    /// `("com.microsoft", 1)` for ONNX Runtime's contrib ops): `apply_patch` adds the import when the
    /// model lacks it. The default domain (`""`) is never raised: that would change the meaning of every
    /// other node, so a model below `version` is an error.
    pub fn require_opset(&mut self, domain: &str, version: i64) {
        self.opsets.push((domain.to_string(), version));
    }

    /// Counts one rewrite (one matched pattern) for the pass manager's record.
    pub fn count_rewrite(&mut self) {
        self.rewrites += 1;
    }

    /// Rewrites counted so far.
    pub fn rewrites(&self) -> usize {
        self.rewrites
    }

    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.added.is_empty()
            && self.initializers.is_empty()
            && self.shunts.is_empty()
            && self.value_infos.is_empty()
    }

    /// A value or initializer name based on `base` that is unused in the graph and in this patch.
    pub fn fresh_name(&mut self, index: &GraphIndex, base: &str) -> String {
        let mut candidate = base.to_string();
        let mut n = 0usize;
        while index.exists(&candidate) || self.names.contains(&candidate) {
            n += 1;
            candidate = format!("{base}_{n}");
        }
        self.names.insert(candidate.clone());
        candidate
    }
}

/// What [`apply_patch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchStats {
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// Nodes dropped because nothing used their outputs any more.
    pub dead_nodes: usize,
    /// Initializers dropped because nothing read them any more.
    pub dead_initializers: usize,
}

/// Applies `patch` to the main graph of `model`: see the module docs. On error the model is unchanged.
pub fn apply_patch(model: &mut OnnxModel, patch: Patch) -> Result<PatchStats> {
    let graph = model.graph();
    let nodes_before = graph.node.len();
    if let Some(&bad) = patch.removed.iter().find(|&&i| i >= nodes_before) {
        return Err(Error::internal(format!("patch removes node {bad}, but the graph has {nodes_before} nodes")));
    }
    let renames = resolve_shunts(&patch.shunts)?;

    let mut g: GraphProto = graph.clone();
    let old_nodes = std::mem::take(&mut g.node);
    let mut nodes: Vec<NodeProto> =
        old_nodes.into_iter().enumerate().filter(|(i, _)| !patch.removed.contains(i)).map(|(_, n)| n).collect();
    let first_added = nodes.len();
    nodes.extend(patch.added);

    // Initializers: replaced by name, else appended.
    for t in patch.initializers {
        match g.initializer.iter_mut().find(|x| x.name() == t.name()) {
            Some(slot) => *slot = t,
            None => g.initializer.push(t),
        }
    }

    // Uses of a shunted value read its replacement.
    if !renames.is_empty() {
        for n in &mut nodes {
            rename_uses(n, &|s| renames.get(s).cloned());
        }
    }

    // Graph outputs keep their names: the replacement is renamed to the output, or an Identity is added.
    let input_names: HashSet<String> = g.input.iter().map(|v| v.name().to_string()).collect();
    let output_names: HashSet<String> = g.output.iter().map(|v| v.name().to_string()).collect();
    let init_names: HashSet<String> = g.initializer.iter().map(|t| t.name().to_string()).collect();
    let mut claimed: HashSet<String> = HashSet::new();
    let mut counter = 0usize;
    let mut taken: HashSet<String> = nodes.iter().flat_map(|n| n.output.iter().cloned()).collect();
    taken.extend(input_names.iter().cloned());
    taken.extend(init_names.iter().cloned());
    let mut fresh = |base: &str, taken: &mut HashSet<String>| loop {
        counter += 1;
        let name = format!("{base}__dfast_{counter}");
        if taken.insert(name.clone()) {
            return name;
        }
    };
    for out in g.output.iter().map(|v| v.name().to_string()).collect::<Vec<_>>() {
        let Some(target) = renames.get(&out) else { continue };
        // A kept node still producing the old output: its value is replaced, so it gets a dead name.
        for n in nodes.iter_mut() {
            for o in n.output.iter_mut().filter(|o| **o == out) {
                *o = fresh(&out, &mut taken);
            }
        }
        let produced = nodes.iter().any(|n| n.output.iter().any(|o| o == target));
        let renamable = produced
            && !input_names.contains(target)
            && !output_names.contains(target)
            && !init_names.contains(target)
            && claimed.insert(target.clone());
        if renamable {
            for n in nodes.iter_mut() {
                for o in n.output.iter_mut().filter(|o| *o == target) {
                    *o = out.clone();
                }
                rename_uses(n, &|s| (s == target).then(|| out.clone()));
            }
            for v in g.value_info.iter_mut().filter(|v| v.name() == target) {
                v.set_name(out.clone());
            }
        } else {
            let name = fresh(&format!("{out}_identity"), &mut taken);
            nodes.push(
                super::graph::NodeBuilder::new("Identity")
                    .name(name)
                    .inputs([target.clone()])
                    .outputs([out.clone()])
                    .build(),
            );
        }
    }

    // Added nodes without a name get a unique one (ONNX Runtime reports nodes by name).
    let mut node_names: HashSet<String> = nodes.iter().map(|n| n.name().to_string()).collect();
    for (k, n) in nodes.iter_mut().enumerate().skip(first_added) {
        if n.name().is_empty() {
            let mut i = k;
            let name = loop {
                let c = format!("{}_dfast_{i}", n.op_type());
                if !node_names.contains(&c) {
                    break c;
                }
                i += 1;
            };
            node_names.insert(name.clone());
            n.set_name(name);
        }
    }

    for v in patch.value_infos {
        let name = v.name().to_string();
        if let Some(slot) = g.input.iter_mut().chain(g.output.iter_mut()).find(|x| x.name() == name) {
            *slot = v;
        } else if let Some(slot) = g.value_info.iter_mut().find(|x| x.name() == name) {
            *slot = v;
        } else {
            g.value_info.push(v);
        }
    }

    let opsets = merged_opsets(model, &patch.opsets)?;
    let sorted = topological_sort(nodes, &g)?;
    let (live, dead_nodes) = drop_dead(sorted, &g);

    // Initializers nobody reads go, unless they are graph inputs (part of the model's interface).
    let mut used: HashSet<&str> = HashSet::new();
    for n in &live {
        used.extend(n.input.iter().map(String::as_str));
        used.extend(outer_references(n));
    }
    used.extend(g.output.iter().map(|v| v.name()));
    let inits_before = g.initializer.len();
    let used: HashSet<String> = used.into_iter().map(str::to_string).collect();
    g.initializer.retain(|t| used.contains(t.name()) || input_names.contains(t.name()));
    let dead_initializers = inits_before - g.initializer.len();

    // value_info entries of values that no longer exist would describe nothing (or, worse, a new value
    // that reuses the name).
    let produced: HashSet<&str> = live.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
    let keep: HashSet<String> = produced.into_iter().map(str::to_string).collect();
    g.value_info.retain(|v| keep.contains(v.name()));

    let nodes_after = live.len();
    g.node = live;
    *model.graph_mut() = g;
    model.proto_mut().opset_import = opsets;
    Ok(PatchStats { nodes_before, nodes_after, dead_nodes, dead_initializers })
}

/// The model's opset imports with the ones a patch requires added.
fn merged_opsets(model: &OnnxModel, wanted: &[(String, i64)]) -> Result<Vec<OperatorSetIdProto>> {
    let mut opsets = model.proto().opset_import.clone();
    for (domain, version) in wanted {
        let is_default = |d: &str| d.is_empty() || d == "ai.onnx";
        match opsets.iter_mut().find(|o| o.domain() == domain || (is_default(o.domain()) && is_default(domain))) {
            Some(o) if o.version() >= *version => {}
            Some(o) if is_default(domain) => {
                return Err(Error::bad_input(format!(
                    "the rewrite needs ONNX opset {version} but the model imports opset {}: re-export it at opset \
                     {version} or later",
                    o.version()
                )));
            }
            Some(o) => o.set_version(*version),
            None => {
                opsets.push(super::make_opset(domain, *version));
            }
        }
    }
    Ok(opsets)
}

/// Follows shunt chains to their end; a cycle is an error.
fn resolve_shunts(shunts: &[(String, String)]) -> Result<HashMap<String, String>> {
    let direct: HashMap<&str, &str> = shunts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut resolved = HashMap::new();
    for (from, _) in shunts {
        let mut to = from.as_str();
        let mut steps = 0;
        while let Some(next) = direct.get(to) {
            to = next;
            steps += 1;
            if steps > direct.len() || to == from {
                return Err(Error::internal(format!("patch shunts value `{from}` in a cycle")));
            }
        }
        resolved.insert(from.clone(), to.to_string());
    }
    Ok(resolved)
}

/// Renames the values a node reads, in its inputs and in what its subgraphs read from outside.
fn rename_uses(node: &mut NodeProto, map: &dyn Fn(&str) -> Option<String>) {
    for i in node.input.iter_mut() {
        if let Some(new) = map(i) {
            *i = new;
        }
    }
    for a in node.attribute.iter_mut() {
        for g in a.g.as_mut().into_iter().chain(a.graphs.iter_mut()) {
            rename_in_subgraph(g, map);
        }
    }
}

fn rename_in_subgraph(g: &mut GraphProto, map: &dyn Fn(&str) -> Option<String>) {
    let local: HashSet<String> = g
        .input
        .iter()
        .map(|v| v.name().to_string())
        .chain(g.initializer.iter().map(|t| t.name().to_string()))
        .chain(g.node.iter().flat_map(|n| n.output.iter().cloned()))
        .collect();
    // A name defined inside the subgraph shadows the outer one.
    let inner = |s: &str| if local.contains(s) { None } else { map(s) };
    for n in g.node.iter_mut() {
        rename_uses(n, &inner);
    }
    for o in g.output.iter_mut() {
        if let Some(new) = inner(o.name()) {
            o.set_name(new);
        }
    }
}

/// Orders nodes so that each comes after the producers of what it reads, keeping the given order where
/// it already holds (added nodes land just before their first reader). Errors name the first value
/// read but never defined, or a cycle.
fn topological_sort(nodes: Vec<NodeProto>, g: &GraphProto) -> Result<Vec<NodeProto>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o.as_str(), i).is_some() {
                return Err(Error::internal(format!("value `{o}` would be produced by two nodes")));
            }
        }
    }
    let defined: HashSet<&str> =
        g.input.iter().map(|v| v.name()).chain(g.initializer.iter().map(|t| t.name())).collect();
    for o in producer.keys() {
        if defined.contains(o) {
            return Err(Error::internal(format!(
                "value `{o}` would be both a node output and a graph input/initializer"
            )));
        }
    }
    let reads: Vec<Vec<&str>> = nodes
        .iter()
        .map(|n| n.input.iter().map(String::as_str).filter(|s| !s.is_empty()).chain(outer_references(n)).collect())
        .collect();
    for (i, r) in reads.iter().enumerate() {
        if let Some(missing) = r.iter().find(|s| !producer.contains_key(*s) && !defined.contains(*s)) {
            return Err(Error::internal(format!(
                "node `{}` ({}) would read `{missing}`, which nothing defines",
                nodes[i].name(),
                nodes[i].op_type()
            )));
        }
    }
    // Iterative depth-first search: 0 = new, 1 = on the stack, 2 = emitted.
    let mut state = vec![0u8; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    for root in 0..nodes.len() {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some((i, k)) = stack.pop() {
            if k < reads[i].len() {
                stack.push((i, k + 1));
                if let Some(&p) = producer.get(reads[i][k]) {
                    match state[p] {
                        0 => {
                            state[p] = 1;
                            stack.push((p, 0));
                        }
                        1 => {
                            return Err(Error::internal(format!(
                                "the graph would have a cycle through node `{}`",
                                nodes[p].name()
                            )));
                        }
                        _ => {}
                    }
                }
            } else {
                state[i] = 2;
                order.push(i);
            }
        }
    }
    let mut slots: Vec<Option<NodeProto>> = nodes.into_iter().map(Some).collect();
    Ok(order.into_iter().map(|i| slots[i].take().expect("each node emitted once")).collect())
}

/// Keeps the nodes that contribute to a graph output; returns them (in order) and how many went.
fn drop_dead(sorted: Vec<NodeProto>, g: &GraphProto) -> (Vec<NodeProto>, usize) {
    let mut live_values: HashSet<String> = g.output.iter().map(|v| v.name().to_string()).collect();
    let mut keep = vec![false; sorted.len()];
    for (i, n) in sorted.iter().enumerate().rev() {
        if n.output.iter().any(|o| live_values.contains(o)) {
            keep[i] = true;
            live_values.extend(n.input.iter().cloned());
            live_values.extend(outer_references(n).into_iter().map(str::to_string));
        }
    }
    let total = sorted.len();
    let live: Vec<NodeProto> = sorted.into_iter().zip(keep).filter(|(_, k)| *k).map(|(n, _)| n).collect();
    let dead = total - live.len();
    (live, dead)
}
