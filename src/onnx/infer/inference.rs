//! The walk over a graph: facts of every value in node order ([`Inference`]).

use std::collections::HashMap;

use super::MAX_CONST_ELEMENTS;
use super::Shape;
use super::constant::Const;
use super::facts::Facts;
use super::rules;
use crate::onnx::graph::GraphIndex;

/// Facts for every value of a graph, computed in one walk in node order.
pub struct Inference {
    facts: HashMap<String, Facts>,
}

impl Inference {
    /// Infers facts for the main graph behind `index`. Declared value infos (graph inputs, outputs,
    /// `value_info`) fill in what the ops do not tell.
    pub fn run(index: &GraphIndex) -> Inference {
        let model = index.model();
        let graph = index.graph();
        let opset = model.opset("").unwrap_or(17);
        let mut facts: HashMap<String, Facts> = HashMap::new();
        for v in &graph.input {
            facts.insert(v.name().to_string(), declared(index, v.name()));
        }
        for t in &graph.initializer {
            let f = if index.is_graph_input(t.name()) {
                declared(index, t.name())
            } else {
                match Const::from_tensor(model, t) {
                    Some(c) => Facts::of_const(c),
                    None => Facts::typed(Some(t.data_type()), Some(t.dims.iter().map(|&d| Some(d)).collect())),
                }
            };
            facts.insert(t.name().to_string(), f);
        }
        let empty = Facts::default();
        for node in &graph.node {
            let ins: Vec<&Facts> = node.input.iter().map(|i| facts.get(i).unwrap_or(&empty)).collect();
            let mut outs = rules::infer_node(node, &ins, model, opset);
            outs.resize(node.output.len(), Facts::default());
            for (name, mut f) in node.output.iter().zip(outs) {
                if name.is_empty() {
                    continue;
                }
                if let Some(v) = &f.value
                    && v.len() > MAX_CONST_ELEMENTS
                {
                    f.value = None;
                }
                facts.insert(name.clone(), merge(f, declared(index, name)));
            }
        }
        Inference { facts }
    }

    /// Everything known about `value`.
    pub fn facts(&self, value: &str) -> Option<&Facts> {
        self.facts.get(value)
    }

    /// Element type of `value`.
    pub fn dtype(&self, value: &str) -> Option<i32> {
        self.facts(value)?.dtype
    }

    /// Shape of `value`.
    pub fn shape(&self, value: &str) -> Option<&Shape> {
        self.facts(value)?.shape.as_ref()
    }

    /// Constant value of `value`.
    pub fn value(&self, value: &str) -> Option<&Const> {
        self.facts(value)?.value.as_ref()
    }
}

fn declared(index: &GraphIndex, name: &str) -> Facts {
    Facts::typed(index.declared_elem_type(name), index.declared_shape(name))
}

/// Inferred facts, with unknown parts taken from the declared ones.
fn merge(mut inferred: Facts, declared: Facts) -> Facts {
    if inferred.dtype.is_none() {
        inferred.dtype = declared.dtype;
    }
    match (&mut inferred.shape, declared.shape) {
        (None, d) => inferred.shape = d,
        (Some(s), Some(d)) if s.len() == d.len() => {
            for (a, b) in s.iter_mut().zip(d) {
                if a.is_none() {
                    *a = b;
                }
            }
        }
        _ => {}
    }
    inferred
}
