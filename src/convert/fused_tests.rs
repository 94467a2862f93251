//! The `fused` profile's passes as `convert --ep cuda` builds them (`cuda_only_fusions` on), on the tiny
//! UNets: what their graph becomes as a whole. (Each pass's own tests, against the unrewritten graph, are
//! in `passes/`.)

use std::collections::BTreeMap;

use super::Profile;
use crate::onnx::{GraphIndex, OnnxModel, attr_ints, is_op};
use crate::passes::testing::{count, tiny};
use crate::passes::{BuildContext, NhwcConv, PassContext, PassManager, registry};
use crate::settings::{ExecutionProvider, Precision};

fn cuda() -> PassContext {
    PassContext::new(ExecutionProvider::Cuda)
}

/// The passes of profile `fused` with `cuda_only_fusions` on, built as `convert --ep cuda` builds them.
pub(crate) fn fused_passes(until: &str) -> PassManager {
    let profile = Profile::load("fused").unwrap();
    let mut ctx = BuildContext::new(ExecutionProvider::Cuda, Precision::Fp32);
    ctx.cuda_only_fusions = true;
    let mut manager = PassManager::new();
    for name in &profile.passes {
        let info = registry::lookup(name).unwrap();
        manager.push(info.name, info.build(&profile.pass_options(name, ExecutionProvider::Cuda), &ctx).unwrap());
        if name == until {
            break;
        }
    }
    manager
}

/// Each Transpose as `producer -perm-> [readers]`.
fn describe_transposes(model: &OnnxModel) -> Vec<String> {
    let index = GraphIndex::new(model);
    model
        .graph()
        .node
        .iter()
        .filter(|n| n.op_type() == "Transpose")
        .map(|n| {
            let perm = attr_ints(n, "perm").unwrap().to_vec();
            let from = index.producer_node(&n.input[0]).map_or("input".into(), |p| p.op_type().to_string());
            let to: Vec<&str> = index.consumers(&n.output[0]).iter().map(|&c| index.node(c).op_type()).collect();
            format!("{from} -{perm:?}-> {to:?}")
        })
        .collect()
}

/// On the `fused` profile's output (cuda_only_fusions on): every conv NhwcConv, and the only transposes left
/// are the entry (the sample) and the exit (the noise prediction): the group norms' and the transformer
/// blocks' own transposes cancel, the time embedding's [N, C, 1, 1] goes NHWC by a Reshape.
#[test]
fn fused_tiny_sdxl_is_channels_last() {
    for name in ["tiny-sdxl/unet", "tiny-sdxl-dynamo/unet", "tiny-sd/unet", "tiny-sd-dynamo/unet"] {
        let mut model = OnnxModel::load(tiny(name)).unwrap();
        let convs = count(&model, "Conv");
        let mut without = model.clone();
        fused_passes("group-norm").run(&mut without, &cuda()).unwrap();
        let records = fused_passes("").run(&mut model, &cuda()).unwrap();
        let nhwc = records.iter().find(|r| r.pass == "nhwc-conv").expect("in profile fused");
        let left = describe_transposes(&model);
        eprintln!(
            "{name}: nhwc-conv {} rewrites; Transpose {} -> {}; {left:#?}",
            nhwc.rewrites,
            count(&without, "Transpose"),
            count(&model, "Transpose")
        );
        assert_eq!((count(&model, "NhwcConv"), count(&model, "Conv")), (convs, 0), "{name}");
        assert_eq!(count(&model, "Transpose"), 2, "{name}: only the entry and the exit");
        assert_eq!(count(&model, "GroupNorm") + count(&model, "SkipGroupNorm"), 21, "{name}");
        assert!(
            PassManager::new().with(NhwcConv::new(true)).run(&mut model, &cuda()).unwrap().remove(0).unchanged(),
            "{name}: idempotent"
        );
    }
}

/// What the fused profile (cuda_only_fusions on) leaves of MatMul + constant bias Adds on the tiny SDXL
/// UNets, by what reads the Add: at SDXL's sizes geglu (BiasSplitGelu, widths 2560/5120/10240) and bias-add
/// (BiasAdd, 320/640/1280 channels) take the first two kinds, which the tiny widths (32, 64) do not meet;
/// `proj_in`'s bias, read by a LayerNormalization and a SkipLayerNormalization, has no kernel.
#[test]
fn what_the_fused_profile_leaves() {
    for name in ["tiny-sdxl/unet", "tiny-sdxl-dynamo/unet"] {
        let mut model = OnnxModel::load(tiny(name)).unwrap();
        let records = fused_passes("").run(&mut model, &cuda()).unwrap();
        assert_eq!(records.last().unwrap().pass, "bias-epilogue");
        let index = GraphIndex::new(&model);
        let mut left: BTreeMap<String, usize> = BTreeMap::new();
        for n in model.graph().node.iter().filter(|n| is_op(n, "Add")) {
            let mm = n.input.iter().any(|i| index.producer_node(i).is_some_and(|p| is_op(p, "MatMul")));
            let bias = n.input.iter().any(|i| index.const_tensor(i).is_some());
            if mm && bias {
                let mut readers: Vec<&str> =
                    index.consumers(&n.output[0]).iter().map(|&c| index.node(c).op_type()).collect();
                readers.sort();
                *left.entry(readers.join("+")).or_default() += 1;
            }
        }
        eprintln!("{name}: {left:?}; bias-epilogue {:?}", records.last().unwrap());
        let split = if name.contains("dynamo") { "Split" } else { "Slice+Slice" };
        let want: BTreeMap<String, usize> =
            [("Add", 4), (split, 8), ("LayerNormalization+SkipLayerNormalization", 4), ("Reshape", 2)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(left, want, "{name}");
    }
}
