//! Emitting: the [`Patch`] built from a [`Plan`]: Casts where a value is read in the other type, converted
//! or copied constants, graph outputs kept float32 behind a Cast, Casts and ConstantOfShape / Random*
//! nodes retyped by attribute, and value_info entries that follow the new types.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use half::{bf16, f16};

use super::PrecisionPass;
use super::plan::{ConstPlan, Mode, Plan, fixed_input};
use crate::onnx::proto::onnx::type_proto;
use crate::onnx::tensor::{dtype_name, tensor_from_raw};
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, TensorProto, ValueInfoProto, attr, attr_int, dtype,
    make_attr_int, make_attr_tensor,
};
use crate::settings::Precision;
use crate::{Error, Result};

/// Builds the patch that carries out `plan` on `model` (whose index is `index`).
pub(super) fn emit(pass: &PrecisionPass, model: &OnnxModel, index: &GraphIndex, plan: &Plan) -> Result<Patch> {
    let mut emitter = Emitter {
        model,
        index,
        nodes: index.nodes(),
        plan,
        h: crate::onnx::dtype::of(pass.precision),
        suffix: pass.precision.name(),
        patch: Patch::new(),
        input_renames: HashMap::new(),
        output_renames: HashMap::new(),
        casts: HashMap::new(),
        h_alias: HashMap::new(),
        replaced_constants: HashMap::new(),
    };
    if pass.keep_io_types {
        emitter.alias_outputs();
    }
    emitter.cast_reads();
    emitter.convert_constants()?;
    emitter.rebuild_nodes()?;
    emitter.retype_declared();
    Ok(emitter.patch)
}

/// The patch being built, and the changes to existing nodes collected until they are rebuilt.
struct Emitter<'a, 'm> {
    model: &'a OnnxModel,
    index: &'a GraphIndex<'m>,
    nodes: &'m [NodeProto],
    plan: &'a Plan,
    /// The half type, and its name as a suffix of new value names.
    h: i32,
    suffix: &'static str,
    patch: Patch,
    /// Per node: input index -> new name.
    input_renames: HashMap<usize, HashMap<usize, String>>,
    /// Per node: output index -> new name.
    output_renames: HashMap<usize, HashMap<usize, String>>,
    /// (value, type) -> the output of the Cast that makes it: one Cast per value and type.
    casts: HashMap<(String, i32), String>,
    /// Graph outputs kept float32 -> the h value their producer now writes.
    h_alias: HashMap<String, String>,
    /// Constant nodes whose value is converted in place -> the new value.
    replaced_constants: HashMap<usize, TensorProto>,
}

impl Emitter<'_, '_> {
    /// The value `v` cast to `to`, adding the Cast on first use.
    fn cast_of(&mut self, v: &str, to: i32) -> String {
        let (index, suffix, patch) = (self.index, self.suffix, &mut self.patch);
        self.casts
            .entry((v.to_string(), to))
            .or_insert_with(|| {
                let tag = match to {
                    dtype::FLOAT => "fp32",
                    dtype::BFLOAT16 if suffix != "bf16" => "bf16",
                    _ => suffix,
                };
                let name = patch.fresh_name(index, &format!("{v}_{tag}"));
                patch.add_node(NodeBuilder::new("Cast").inputs([v]).outputs([&name]).attr_int("to", to as i64).build());
                if let Some(vi) = index.value_info(v) {
                    patch.set_value_info(retyped(vi, &name, to));
                }
                name
            })
            .clone()
    }

    /// Graph outputs that must stay float32 but are now produced in h: the producer writes an h value,
    /// a Cast writes the output.
    fn alias_outputs(&mut self) {
        let (index, nodes, plan, h) = (self.index, self.nodes, self.plan, self.h);
        for out in &index.graph().output {
            let o = out.name();
            let Some(p) = index.producer(o) else { continue };
            let Some(&t) = plan.after.get(o) else { continue };
            if !(plan.before.get(o) == Some(&dtype::FLOAT) && (t == h || t == dtype::BFLOAT16)) {
                continue;
            }
            let alias = self.patch.fresh_name(index, &format!("{o}_{}", self.suffix));
            let k = nodes[p].output.iter().position(|x| x == o).unwrap_or(0);
            self.output_renames.entry(p).or_default().insert(k, alias.clone());
            self.patch.add_node(
                NodeBuilder::new("Cast").inputs([&alias]).outputs([o]).attr_int("to", dtype::FLOAT as i64).build(),
            );
            if let Some(vi) = index.value_info(o) {
                self.patch.set_value_info(retyped(vi, &alias, t));
            }
            self.h_alias.insert(o.to_string(), alias);
        }
        // Everything that read the output as h reads the alias.
        for (o, alias) in &self.h_alias {
            for &c in index.consumers(o) {
                if plan.modes[c] == Mode::Keep {
                    continue;
                }
                for (k, x) in nodes[c].input.iter().enumerate() {
                    if x == o && !(plan.modes[c] == Mode::Half && fixed_input(&nodes[c], k)) {
                        self.input_renames.entry(c).or_default().insert(k, alias.clone());
                    }
                }
            }
        }
    }

    /// Reads of non-constant values in the other type: through a Cast.
    fn cast_reads(&mut self) {
        let (nodes, plan) = (self.nodes, self.plan);
        for &(i, k, ty) in &plan.half_reads {
            let name = self.cast_of(&nodes[i].input[k], ty);
            self.input_renames.entry(i).or_default().insert(k, name);
        }
        for &(i, k) in &plan.float_reads {
            let v = &nodes[i].input[k];
            if self.h_alias.contains_key(v) {
                continue; // the graph output itself is the float32 value
            }
            let name = self.cast_of(v, dtype::FLOAT);
            self.input_renames.entry(i).or_default().insert(k, name);
        }
    }

    /// Reads of float32 constants as h: converted in place, or an h copy next to the original.
    fn convert_constants(&mut self) -> Result<()> {
        let (model, index) = (self.model, self.index);
        for (v, how) in &self.plan.constants {
            let tensor = index.const_tensor(v).ok_or_else(|| Error::runtime(format!("`{v}` is not a constant")))?;
            let producer = index.producer(v);
            match how {
                &ConstPlan::InPlace(ty) => {
                    let converted = convert_tensor(model, &tensor, v, precision_of(ty))?;
                    match producer {
                        Some(p) => {
                            self.replaced_constants.insert(p, converted);
                        }
                        None => self.patch.add_initializer(converted),
                    }
                }
                ConstPlan::Copy(reads) => {
                    let mut copies: HashMap<i32, String> = HashMap::new();
                    for &(i, k, ty) in reads {
                        let name = match copies.get(&ty) {
                            Some(name) => name.clone(),
                            None => {
                                let p = precision_of(ty);
                                let name = self.patch.fresh_name(index, &format!("{v}_{}", p.name()));
                                self.patch.add_initializer(convert_tensor(model, &tensor, &name, p)?);
                                copies.insert(ty, name.clone());
                                name
                            }
                        };
                        self.input_renames.entry(i).or_default().insert(k, name);
                    }
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the nodes that change (renamed inputs or outputs, a new Cast type, a converted value or
    /// type attribute) and counts the converted nodes.
    fn rebuild_nodes(&mut self) -> Result<()> {
        let (nodes, plan) = (self.nodes, self.plan);
        let mut changed: BTreeSet<usize> = BTreeSet::new();
        changed.extend(self.input_renames.keys());
        changed.extend(self.output_renames.keys());
        changed.extend(plan.new_cast_to.keys());
        changed.extend(self.replaced_constants.keys());
        let attr_changes: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| plan.modes[*i] == Mode::Half && needs_attr_change(n, &plan.before))
            .map(|(i, _)| i)
            .collect();
        changed.extend(&attr_changes);
        for (i, n) in nodes.iter().enumerate() {
            if plan.modes[i] == Mode::Half
                && n.output.iter().any(|o| !o.is_empty() && plan.after.get(o) != plan.before.get(o))
            {
                self.patch.count_rewrite();
            }
        }
        for &i in &changed {
            let mut node = nodes[i].clone();
            if let Some(r) = self.input_renames.get(&i) {
                for (&k, name) in r {
                    node.input[k] = name.clone();
                }
            }
            if let Some(r) = self.output_renames.get(&i) {
                for (&k, name) in r {
                    node.output[k] = name.clone();
                }
            }
            if let Some(&to) = plan.new_cast_to.get(&i) {
                set_attr(&mut node, make_attr_int("to", to as i64));
            }
            if let Some(t) = self.replaced_constants.remove(&i) {
                node.attribute.clear();
                node.attribute.push(make_attr_tensor("value", t));
            }
            if attr_changes.contains(&i) {
                change_attrs(&mut node, precision_of(plan.node_types[i]))?;
            }
            self.patch.remove_node(i);
            self.patch.add_node(node);
        }
        Ok(())
    }

    /// Declared types (graph inputs, value_info, graph outputs) follow the new types.
    fn retype_declared(&mut self) {
        let graph = self.index.graph();
        for v in graph.input.iter().chain(graph.value_info.iter()).chain(graph.output.iter()) {
            let name = v.name();
            if self.h_alias.contains_key(name) {
                continue;
            }
            let declared = match v.type_.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(tt)) => tt.elem_type,
                _ => None,
            };
            if let (Some(&t), Some(declared)) = (self.plan.after.get(name), declared)
                && t != declared
            {
                self.patch.set_value_info(retyped(v, name, t));
            }
        }
    }
}

/// Converted nodes whose output type is set by an attribute.
fn needs_attr_change(node: &NodeProto, cur: &HashMap<String, i32>) -> bool {
    let out_is_float = node.output.first().is_some_and(|o| cur.get(o.as_str()) == Some(&dtype::FLOAT));
    out_is_float
        && (crate::onnx::is_op(node, "ConstantOfShape")
            || crate::onnx::is_op(node, "RandomNormal")
            || crate::onnx::is_op(node, "RandomUniform")
            || attr_int(node, "dtype") == Some(dtype::FLOAT as i64))
}

/// Sets the type attribute of a converted ConstantOfShape / Random* node.
fn change_attrs(node: &mut NodeProto, h: Precision) -> Result<()> {
    if crate::onnx::is_op(node, "ConstantOfShape") {
        let value = match attr(node, "value").and_then(|a| a.t.as_ref()) {
            Some(t) => t.clone(),
            None => tensor_from_raw("value", dtype::FLOAT, &[1], Bytes::from(0f32.to_le_bytes().to_vec())),
        };
        let floats = crate::onnx::tensor::bytes_to_f32(value.name(), value.data_type(), &inline_bytes(&value)?)?;
        let mut t = half_tensor(value.name(), &value.dims, &floats, h);
        t.dims = value.dims.clone();
        set_attr(node, make_attr_tensor("value", t));
    } else {
        set_attr(node, make_attr_int("dtype", crate::onnx::dtype::of(h) as i64));
    }
    Ok(())
}

/// The bytes of a small tensor held in an attribute.
fn inline_bytes(t: &TensorProto) -> Result<Bytes> {
    if let Some(raw) = &t.raw_data {
        return Ok(raw.clone());
    }
    if t.data_type() == dtype::FLOAT {
        return Ok(Bytes::from(t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()));
    }
    Err(Error::bad_input(format!(
        "tensor `{}` ({}) holds no data dfast can read in place",
        t.name(),
        dtype_name(t.data_type())
    )))
}

/// The precision of half type `ty` (bfloat16 or float16).
fn precision_of(ty: i32) -> Precision {
    if ty == dtype::BFLOAT16 { Precision::Bf16 } else { Precision::Fp16 }
}

/// Replaces (or adds) an attribute by name.
fn set_attr(node: &mut NodeProto, a: crate::onnx::AttributeProto) {
    node.attribute.retain(|x| x.name() != a.name());
    node.attribute.push(a);
}

/// A float32 constant as an h tensor called `name` (float16 clamps to its finite range).
fn convert_tensor(model: &OnnxModel, t: &TensorProto, name: &str, h: Precision) -> Result<TensorProto> {
    if t.data_type() != dtype::FLOAT {
        return Err(Error::runtime(format!("`{}` is {}, not float32", t.name(), dtype_name(t.data_type()))));
    }
    let bytes = model.tensor_bytes(t)?;
    let mut raw = Vec::with_capacity(bytes.len() / 2);
    for c in bytes.chunks_exact(4) {
        raw.extend_from_slice(&half_bits(f32::from_le_bytes([c[0], c[1], c[2], c[3]]), h).to_le_bytes());
    }
    let mut out = tensor_from_raw(name, crate::onnx::dtype::of(h), &[], Bytes::from(raw));
    out.dims = t.dims.clone();
    Ok(out)
}

fn half_tensor(name: &str, dims: &[i64], values: &[f32], h: Precision) -> TensorProto {
    let raw: Vec<u8> = values.iter().flat_map(|&v| half_bits(v, h).to_le_bytes()).collect();
    let mut t = tensor_from_raw(name, crate::onnx::dtype::of(h), &[], Bytes::from(raw));
    t.dims = dims.to_vec();
    t
}

/// The bits of `v` in h; float16 saturates at ±65504 instead of overflowing to infinity.
fn half_bits(v: f32, h: Precision) -> u16 {
    if h == Precision::Bf16 {
        return bf16::from_f32(v).to_bits();
    }
    let max = f16::MAX.to_f32();
    let v = if v.is_finite() { v.clamp(-max, max) } else { v };
    f16::from_f32(v).to_bits()
}

/// A copy of value info `vi` called `name` with element type `t` (shape kept).
fn retyped(vi: &ValueInfoProto, name: &str, t: i32) -> ValueInfoProto {
    let mut v = vi.clone();
    v.set_name(name.to_string());
    if let Some(type_proto::Value::TensorType(tt)) = v.type_.mut_or_insert_default().value.as_mut() {
        tt.set_elem_type(t);
    } else {
        let mut tt = type_proto::Tensor::new();
        tt.set_elem_type(t);
        v.type_.mut_or_insert_default().value = Some(type_proto::Value::TensorType(tt));
    }
    v
}
