//! Image decoding and preprocessing: bytes from outside become the input tensor a spec describes.
//!
//! Every size here comes from outside, so each one is capped before memory is committed: the encoded size, the
//! decoded dimensions and the decoder's allocations (a 40 KB PNG can claim to be 60,000 x 60,000 pixels).

use image::{imageops::FilterType, DynamicImage, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

use super::spec::{Color, Layout, ModelSpec};
use super::task::{Fit, Resize, Task};
use super::InferenceError;

/// Caps on untrusted images. The defaults fit camera frames on a small device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_bytes: usize,
    pub max_width: u32,
    pub max_height: u32,
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 16 * 1024 * 1024,
            max_width: 8192,
            max_height: 8192,
            max_alloc: 256 * 1024 * 1024,
        }
    }
}

/// Decodes a PNG or JPEG within `limits`. Anything else is refused with the reason.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, InferenceError> {
    if bytes.is_empty() {
        return Err(InferenceError::Image("the input is empty (0 bytes)".into()));
    }
    if bytes.len() > limits.max_bytes {
        return Err(InferenceError::TooLarge {
            what: "image",
            size: bytes.len() as u64,
            limit: limits.max_bytes as u64,
        });
    }
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, ImageFormat::Png | ImageFormat::Jpeg));
    let Some(format) = format else {
        return Err(InferenceError::Image("not a PNG or JPEG image".into()));
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => InferenceError::Image(format!(
            "image exceeds the decoder limits ({l}; at most {}x{} pixels)",
            limits.max_width, limits.max_height
        )),
        other => InferenceError::Image(format!(
            "cannot decode {format:?} image: {}",
            super::one_line(&other)
        )),
    })
}

/// Turns a decoded image into the model's input tensor (flat, in the spec's layout).
pub fn to_tensor(img: &DynamicImage, spec: &ModelSpec) -> Vec<f32> {
    to_task_input(img, spec).0
}

/// The same, with how the image was fitted to the input: stretched, or (a detector whose spec says so) letterboxed
/// into the input with the spec's fill around it.
pub fn to_task_input(img: &DynamicImage, spec: &ModelSpec) -> (Vec<f32>, Fit) {
    let p = &spec.preprocess;
    let (resize, fill) = match &spec.task {
        Some(Task::Detection(d)) => (d.resize, d.fill),
        _ => (Resize::Stretch, 0),
    };
    let fit = Fit::new(resize, img.width(), img.height(), p.width, p.height);
    let resized;
    let img = match resize {
        _ if img.width() == p.width && img.height() == p.height => img,
        Resize::Stretch => {
            resized = img.resize_exact(p.width, p.height, FilterType::Triangle);
            &resized
        }
        Resize::Letterbox => {
            let (sw, sh) = fit.scaled_size();
            let inner = img.resize_exact(sw.min(p.width), sh.min(p.height), FilterType::Triangle);
            // RGBA: the fill is gray, so the later conversion to the spec's colour keeps it as it is.
            let mut canvas = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
                p.width,
                p.height,
                image::Rgba([fill, fill, fill, 255]),
            ));
            image::imageops::overlay(&mut canvas, &inner, fit.pad_x as i64, fit.pad_y as i64);
            resized = canvas;
            &resized
        }
    };
    let (w, h) = (p.width as usize, p.height as usize);
    let c = spec.channels();
    let pixels: Vec<u8> = match p.color {
        Color::Gray => img.to_luma8().into_raw(),
        Color::Rgb => img.to_rgb8().into_raw(),
    };
    // Precompute per channel: x = p * a + b with a = 1 / (scale * std), b = -mean / std.
    let coef: Vec<(f32, f32)> = (0..c)
        .map(|ch| (1.0 / (p.scale * p.std[ch]), -p.mean[ch] / p.std[ch]))
        .collect();
    let mut out = vec![0f32; c * h * w];
    for (i, px) in pixels.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            let (a, b) = coef[ch];
            let x = v as f32 * a + b;
            let idx = match spec.input.layout {
                Layout::Nchw => ch * h * w + i,
                Layout::Nhwc => i * c + ch,
            };
            out[idx] = x;
        }
    }
    (out, fit)
}

/// Decode then preprocess, with the image's fit (a detector maps its boxes back with it).
pub fn image_to_task_input(
    bytes: &[u8],
    spec: &ModelSpec,
    limits: &DecodeLimits,
) -> Result<(Vec<f32>, Fit), InferenceError> {
    Ok(to_task_input(&decode(bytes, limits)?, spec))
}

/// Decode then preprocess: the path every request takes.
pub fn image_to_tensor(
    bytes: &[u8],
    spec: &ModelSpec,
    limits: &DecodeLimits,
) -> Result<Vec<f32>, InferenceError> {
    Ok(to_tensor(&decode(bytes, limits)?, spec))
}
