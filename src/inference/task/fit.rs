//! How an image was fitted to the model's input (stretched or letterboxed), and the way back to its pixels.

use serde::{Deserialize, Serialize};

use super::*;

/// The size of the model's input and how an image was fitted into it: `input = image * scale + pad`, per axis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub image_width: u32,
    pub image_height: u32,
    pub scale_x: f32,
    pub scale_y: f32,
    pub pad_x: f32,
    pub pad_y: f32,
}

impl Fit {
    /// How an image of `w` x `h` fits an input of `iw` x `ih`.
    pub fn new(resize: Resize, w: u32, h: u32, iw: u32, ih: u32) -> Fit {
        let (fw, fh) = (w.max(1) as f32, h.max(1) as f32);
        match resize {
            Resize::Stretch => Fit {
                image_width: w,
                image_height: h,
                scale_x: iw as f32 / fw,
                scale_y: ih as f32 / fh,
                pad_x: 0.0,
                pad_y: 0.0,
            },
            Resize::Letterbox => {
                let s = (iw as f32 / fw).min(ih as f32 / fh);
                let (sw, sh) = ((fw * s).round(), (fh * s).round());
                Fit {
                    image_width: w,
                    image_height: h,
                    scale_x: s,
                    scale_y: s,
                    pad_x: ((iw as f32 - sw) / 2.0).floor(),
                    pad_y: ((ih as f32 - sh) / 2.0).floor(),
                }
            }
        }
    }

    /// The size the image is scaled to inside the input (the letterbox's content area).
    pub fn scaled_size(&self) -> (u32, u32) {
        (
            (self.image_width as f32 * self.scale_x).round().max(1.0) as u32,
            (self.image_height as f32 * self.scale_y).round().max(1.0) as u32,
        )
    }

    /// A box in input pixels, mapped to image pixels and clipped to the image.
    pub(super) fn image_box(&self, b: [f32; 4]) -> [f32; 4] {
        let (w, h) = (self.image_width as f32, self.image_height as f32);
        [
            ((b[0] - self.pad_x) / self.scale_x).clamp(0.0, w),
            ((b[1] - self.pad_y) / self.scale_y).clamp(0.0, h),
            ((b[2] - self.pad_x) / self.scale_x).clamp(0.0, w),
            ((b[3] - self.pad_y) / self.scale_y).clamp(0.0, h),
        ]
    }
}
