//! Initial latents: drawn like torch's CPU generator, or read from a .npy file; final latents to .npy.

use std::fs::File;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use super::torch_rng::TorchGenerator;
use crate::scheduler::NoiseSource;
use crate::{Error, Result};

/// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`, as diffusers draws latents.
pub fn seeded(seed: u64, shape: &[usize]) -> ArrayD<f32> {
    randn(&mut TorchGenerator::manual_seed(seed), shape)
}

/// `torch.randn(shape, generator=generator)`: the generator's next draws, as diffusers' `randn_tensor`
/// makes them when one generator serves several draws (img2img's encoder sample, then the noise).
pub fn randn(generator: &mut TorchGenerator, shape: &[usize]) -> ArrayD<f32> {
    let data = generator.randn(shape.iter().product());
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("randn gives one value per element")
}

/// A stochastic scheduler step draws from the run's generator, as diffusers' `scheduler.step(..., generator)`.
impl NoiseSource for TorchGenerator {
    fn randn(&mut self, shape: &[usize]) -> ArrayD<f32> {
        randn(self, shape)
    }
}

/// Reads a float32 .npy of exactly `shape`.
pub fn read(path: &Path, shape: &[usize]) -> Result<ArrayD<f32>> {
    let file = File::open(path).map_err(|e| Error::io(path, "cannot open the latents file", e))?;
    let array = ArrayD::<f32>::read_npy(file)
        .map_err(|e| Error::parse_file(path, &format!("expected a float32 .npy array of shape {shape:?}"), e))?;
    if array.shape() != shape {
        return Err(Error::bad_file(
            path,
            format!("latents have shape {:?}, expected {shape:?} for this size and model", array.shape()),
        ));
    }
    if array.iter().any(|v| !v.is_finite()) {
        return Err(Error::bad_file(path, "the latents hold NaN or Inf; expected finite noise"));
    }
    Ok(array)
}

/// Writes `latents` as a float32 .npy, through a temporary file renamed into place.
pub fn write(path: &Path, latents: &ArrayD<f32>) -> Result<()> {
    crate::files::write_atomically(path, "the latents", |out| {
        latents.as_standard_layout().write_npy(out).map_err(|e| Error::io(path, "cannot write the latents", e))
    })
}
