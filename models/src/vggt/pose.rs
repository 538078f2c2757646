//! Camera conventions of VGGT: pose encodings to extrinsics (world-to-camera, OpenCV axes) and
//! pinhole intrinsics, and depth maps unprojected to world points.

/// Rotation matrix (row-major 3x3) of an XYZW quaternion; need not be normalised.
pub fn quat_to_mat(q: [f32; 4]) -> [[f32; 3]; 3] {
    let [i, j, k, r] = q;
    let two_s = 2.0 / (i * i + j * j + k * k + r * r);
    [
        [1.0 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r)],
        [two_s * (i * j + k * r), 1.0 - two_s * (i * i + k * k), two_s * (j * k - i * r)],
        [two_s * (i * k - j * r), two_s * (j * k + i * r), 1.0 - two_s * (i * i + j * j)],
    ]
}

/// A camera as VGGT predicts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera {
    /// World-to-camera [R | t], row-major 3x4, OpenCV axes (x right, y down, z forward).
    pub extrinsic: [[f32; 4]; 3],
    /// Pinhole intrinsics in pixels of the network input, row-major 3x3.
    pub intrinsic: [[f32; 3]; 3],
}

impl Camera {
    /// `pose_encoding_to_extri_intri` for one frame: enc = [t(3), quat xyzw(4), fov_h, fov_w].
    pub fn from_pose_encoding(enc: &[f32], image_hw: (usize, usize)) -> Self {
        let r = quat_to_mat([enc[3], enc[4], enc[5], enc[6]]);
        let mut extrinsic = [[0f32; 4]; 3];
        for row in 0..3 {
            extrinsic[row][..3].copy_from_slice(&r[row]);
            extrinsic[row][3] = enc[row];
        }
        let (h, w) = (image_hw.0 as f32, image_hw.1 as f32);
        let fy = (h / 2.0) / (enc[7] / 2.0).tan();
        let fx = (w / 2.0) / (enc[8] / 2.0).tan();
        let intrinsic = [[fx, 0.0, w / 2.0], [0.0, fy, h / 2.0], [0.0, 0.0, 1.0]];
        Self { extrinsic, intrinsic }
    }

    /// Camera centre in world coordinates, -R^T t.
    pub fn center(&self) -> [f32; 3] {
        let e = &self.extrinsic;
        let mut c = [0f32; 3];
        for (i, ci) in c.iter_mut().enumerate() {
            *ci = -(e[0][i] * e[0][3] + e[1][i] * e[1][3] + e[2][i] * e[2][3]);
        }
        c
    }

    /// Camera-to-world [R^T | -R^T t], row-major 3x4.
    pub fn cam_to_world(&self) -> [[f32; 4]; 3] {
        let e = &self.extrinsic;
        let c = self.center();
        let mut m = [[0f32; 4]; 3];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = e[j][i];
            }
            m[i][3] = c[i];
        }
        m
    }

    /// Unprojects a z-depth map [H*W] (row-major) to world points [H*W*3]
    /// (`unproject_depth_map_to_point_map`; integer pixel coordinates).
    pub fn unproject(&self, depth: &[f32], h: usize, w: usize) -> Vec<f32> {
        let k = &self.intrinsic;
        let (fu, fv, cu, cv) = (k[0][0], k[1][1], k[0][2], k[1][2]);
        let m = self.cam_to_world();
        let mut out = Vec::with_capacity(h * w * 3);
        for v in 0..h {
            for u in 0..w {
                let d = depth[v * w + u];
                let p = [(u as f32 - cu) * d / fu, (v as f32 - cv) * d / fv, d];
                for row in &m {
                    out.push(row[0] * p[0] + row[1] * p[1] + row[2] * p[2] + row[3]);
                }
            }
        }
        out
    }
}
