//! The pass itself: which nodes stay fp32 (`policy`), the types afterwards and where Casts go (`plan`), the
//! patch (`emit`).

use super::PrecisionPass;
use super::emit::emit;
use super::plan::{Plan, current_types};
use crate::Result;
use crate::onnx::{GraphIndex, OnnxModel, Patch};
use crate::passes::{Pass, PassContext};

impl Pass for PrecisionPass {
    fn settings(&self) -> serde_json::Value {
        // Recorded only for range islands (the manifest keeps what was measured and judged).
        let Some(r) = &self.ranges else { return serde_json::Value::Null };
        if self.measured_max.is_none() {
            return serde_json::Value::Null;
        }
        serde_json::json!({
            "ranges": r,
            "limit": r.limit(),
            "measured_max_abs": self.measured_max,
            "out_of_range": self.out_of_range,
        })
    }

    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        // The types as the graph stands, and the nodes that stay fp32.
        let types = current_types(&index);
        let blocked = self.blocked(&index, &types);
        // The type of every value afterwards, and where Casts and converted constants go.
        let plan = Plan::new(self, &index, types, &blocked);
        // The patch that carries it out.
        let patch = emit(self, model, &index, &plan)?;
        Ok((!patch.is_empty()).then_some(patch))
    }
}
