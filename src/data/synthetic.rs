//! Synthetic scenes, deterministic by seed, for every task without downloading anything: a pinhole
//! camera 1.5 m above a ground plane looks at a back wall, with spheres, boxes and cylinders
//! standing on the ground. Each pixel is ray-cast, so the class mask and the metric depth are
//! exact: depth is the z-distance along the optical axis (as NYU depth maps), in metres.
//!
//! Specs: `synthetic-seg:COUNT[xSIZE]` (5 classes) and `synthetic-depth:COUNT[xSIZE]`
//! (COUNT scenes per split, SIZE-pixel squares, default 224); splits draw disjoint seeds.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::{Dataset, Sample, Split, Target};

/// Class names, in label order.
pub const CLASSES: [&str; 5] = ["wall", "ground", "sphere", "box", "cylinder"];
pub const CAMERA_HEIGHT: f64 = 1.5;
pub const PITCH_DEG: f64 = 12.0;
pub const FOV_DEG: f64 = 60.0;
pub const WALL_Z: f64 = 9.0;

use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// Centre (x, z) on the ground, radius.
    Sphere { x: f64, z: f64, r: f64 },
    /// Centre (x, z), half-width, height.
    Box { x: f64, z: f64, half: f64, height: f64 },
    /// Axis vertical, centre (x, z), radius, height.
    Cylinder { x: f64, z: f64, r: f64, height: f64 },
}

impl Shape {
    fn class(&self) -> u32 {
        match self {
            Shape::Sphere { .. } => 2,
            Shape::Box { .. } => 3,
            Shape::Cylinder { .. } => 4,
        }
    }

    /// Distance along the unit ray `o + t·d` to the first hit, and the surface normal there.
    fn hit(&self, o: [f64; 3], d: [f64; 3]) -> Option<(f64, [f64; 3])> {
        match *self {
            Shape::Sphere { x, z, r } => {
                let c = [x, r, z];
                let oc = [o[0] - c[0], o[1] - c[1], o[2] - c[2]];
                let b = dot(oc, d);
                let disc = b * b - (dot(oc, oc) - r * r);
                let t = -b - disc.sqrt();
                (disc >= 0.0 && t > 1e-9).then(|| {
                    let p = add(o, d, t);
                    (t, [(p[0] - c[0]) / r, (p[1] - c[1]) / r, (p[2] - c[2]) / r])
                })
            }
            Shape::Box { x, z, half, height } => {
                let (lo, hi) = ([x - half, 0.0, z - half], [x + half, height, z + half]);
                let (mut t0, mut t1, mut axis) = (f64::NEG_INFINITY, f64::INFINITY, 0);
                for a in 0..3 {
                    if d[a].abs() < 1e-12 {
                        if o[a] < lo[a] || o[a] > hi[a] {
                            return None;
                        }
                        continue;
                    }
                    let (ta, tb) = ((lo[a] - o[a]) / d[a], (hi[a] - o[a]) / d[a]);
                    let (near, far) = (ta.min(tb), ta.max(tb));
                    if near > t0 {
                        t0 = near;
                        axis = a;
                    }
                    t1 = t1.min(far);
                }
                (t0 <= t1 && t0 > 1e-9).then(|| {
                    let mut n = [0.0; 3];
                    n[axis] = -d[axis].signum();
                    (t0, n)
                })
            }
            Shape::Cylinder { x, z, r, height } => {
                let (ox, oz) = (o[0] - x, o[2] - z);
                let a = d[0] * d[0] + d[2] * d[2];
                let b = ox * d[0] + oz * d[2];
                let disc = b * b - a * (ox * ox + oz * oz - r * r);
                if a < 1e-12 || disc < 0.0 {
                    return None;
                }
                let t = (-b - disc.sqrt()) / a;
                let y = o[1] + t * d[1];
                (t > 1e-9 && (0.0..=height).contains(&y)).then(|| {
                    let p = add(o, d, t);
                    (t, [(p[0] - x) / r, 0.0, (p[2] - z) / r])
                })
            }
        }
    }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn add(o: [f64; 3], d: [f64; 3], t: f64) -> [f64; 3] {
    [o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2]]
}

/// One scene: its objects and the colour of each.
#[derive(Debug, Clone)]
pub struct Scene {
    pub objects: Vec<(Shape, [f64; 3])>,
}

impl Scene {
    /// 2 to 6 objects, 2–8 m in front of the camera, non-overlapping footprints.
    pub fn random(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let n = 2 + (rng.next_u64() % 5) as usize;
        let mut objects: Vec<(Shape, [f64; 3])> = Vec::new();
        let mut tries = 0;
        while objects.len() < n && tries < 100 {
            tries += 1;
            let (x, z) = (rng.uniform(-2.5, 2.5), rng.uniform(2.5, 8.0));
            let size = rng.uniform(0.3, 0.8);
            let shape = match rng.next_u64() % 3 {
                0 => Shape::Sphere { x, z, r: size },
                1 => Shape::Box { x, z, half: size, height: rng.uniform(0.4, 1.6) },
                _ => Shape::Cylinder { x, z, r: size * 0.7, height: rng.uniform(0.6, 2.0) },
            };
            let clear = objects.iter().all(|(o, _)| {
                let (ox, oz) = footprint(o);
                ((ox - x).powi(2) + (oz - z).powi(2)).sqrt() > 1.7
            });
            if clear {
                // Class-typical hue with per-object variation.
                let base = match shape {
                    Shape::Sphere { .. } => [0.85, 0.25, 0.2],
                    Shape::Box { .. } => [0.2, 0.4, 0.85],
                    Shape::Cylinder { .. } => [0.9, 0.75, 0.2],
                };
                let colour = base.map(|c: f64| (c + rng.uniform(-0.15, 0.15)).clamp(0.0, 1.0));
                objects.push((shape, colour));
            }
        }
        Self { objects }
    }

    /// Renders `size × size`: image `[3,H,W]` in [0,1], class of each pixel, depth in metres.
    pub fn render(&self, size: usize) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
        let f = (size as f64 / 2.0) / (FOV_DEG.to_radians() / 2.0).tan();
        let (sp, cp) = PITCH_DEG.to_radians().sin_cos();
        let light = {
            let l = [0.4, 0.8, -0.45];
            let n = dot(l, l).sqrt();
            l.map(|v| v / n)
        };
        let o = [0.0, CAMERA_HEIGHT, 0.0];
        let n = size * size;
        let (mut image, mut labels, mut depth) = (vec![0f32; 3 * n], vec![0u32; n], vec![0f32; n]);
        for v in 0..size {
            for u in 0..size {
                // Camera ray (x right, y up, z forward), pitched down about the x axis.
                let (cx, cy) = ((u as f64 + 0.5 - size as f64 / 2.0) / f, -(v as f64 + 0.5 - size as f64 / 2.0) / f);
                let cam = [cx, cy, 1.0];
                let world = [cam[0], cam[1] * cp - cam[2] * sp, cam[1] * sp + cam[2] * cp];
                let len = dot(world, world).sqrt();
                let d = world.map(|c| c / len);
                // Background: the wall (plane z = WALL_Z), then the ground (y = 0), then objects.
                let mut best = (f64::INFINITY, 0u32, [0.0, 0.0, -1.0], [0.0; 3]);
                if d[2] > 1e-9 {
                    let t = (WALL_Z - o[2]) / d[2];
                    let p = add(o, d, t);
                    let shade = 0.55 + 0.1 * ((p[1] * 2.0).floor() as i64 % 2) as f64;
                    best = (t, 0, [0.0, 0.0, -1.0], [shade, shade * 0.95, shade * 0.9]);
                }
                if d[1] < -1e-9 {
                    let t = -o[1] / d[1];
                    if t < best.0 {
                        let p = add(o, d, t);
                        let checker = ((p[0].floor() + p[2].floor()) as i64).rem_euclid(2) as f64;
                        let g = 0.35 + 0.15 * checker;
                        best = (t, 1, [0.0, 1.0, 0.0], [g * 0.8, g, g * 0.7]);
                    }
                }
                for (shape, colour) in &self.objects {
                    if let Some((t, normal)) = shape.hit(o, d) {
                        if t < best.0 {
                            best = (t, shape.class(), normal, *colour);
                        }
                    }
                }
                let (t, class, normal, albedo) = best;
                let lambert = 0.35 + 0.65 * dot(normal, light).max(0.0);
                let i = v * size + u;
                for c in 0..3 {
                    image[c * n + i] = (albedo[c] * lambert).clamp(0.0, 1.0) as f32;
                }
                labels[i] = class;
                // z-depth: the hit's distance along the optical axis.
                let axis = [0.0, -sp, cp];
                depth[i] = (t * dot(d, axis)) as f32;
            }
        }
        (image, labels, depth)
    }
}

fn footprint(s: &Shape) -> (f64, f64) {
    match *s {
        Shape::Sphere { x, z, .. } | Shape::Box { x, z, .. } | Shape::Cylinder { x, z, .. } => (x, z),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Segmentation,
    Depth,
}

pub struct Synthetic {
    task: Task,
    split: Split,
    count: usize,
    size: usize,
}

impl Synthetic {
    /// From the part of the spec after the kind: `COUNT[xSIZE]`.
    pub fn open(task: Task, args: &str, split: Split) -> Result<Self> {
        let (count, size) = match args.split_once('x') {
            Some((c, s)) => (c, s.parse::<usize>().with_context(|| format!("synthetic: bad size '{s}' in '{args}'"))?),
            None => (args, 224),
        };
        let count =
            count.parse::<usize>().with_context(|| format!("synthetic: bad scene count '{count}' in '{args}' (expected COUNT[xSIZE])"))?;
        if count == 0 || size < 8 {
            bail!("synthetic: need at least 1 scene of at least 8 pixels, got '{args}'");
        }
        if size > 4096 || count > 10_000_000 {
            bail!("synthetic: scenes of at most 4096 pixels and at most 10,000,000 of them, got '{args}'");
        }
        Ok(Self { task, split, count, size })
    }

    /// The seed of scene `index` of this split (splits never share a scene).
    pub fn seed(&self, index: usize) -> u64 {
        let split = match self.split {
            Split::Train => 0u64,
            Split::Val => 1,
            Split::Test => 2,
            Split::Unlabeled => 3,
        };
        (split << 40) ^ index as u64
    }
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.count
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.count {
            bail!("index {index} out of range ({})", self.count);
        }
        let (img, labels, depth) = Scene::random(self.seed(index)).render(self.size);
        let (height, width) = (self.size, self.size);
        let image = Tensor::from_vec(img, (3, height, width), &candle_core::Device::Cpu)?;
        let target = match self.task {
            Task::Segmentation => Target::Segmentation { labels, height, width },
            Task::Depth => Target::Depth { metres: depth, height, width },
        };
        Ok(Sample { image, target })
    }

    fn num_classes(&self) -> Option<usize> {
        (self.task == Task::Segmentation).then_some(CLASSES.len())
    }

    fn describe(&self) -> String {
        let kind = if self.task == Task::Segmentation { "synthetic-seg" } else { "synthetic-depth" };
        format!("{kind}:{}x{} [{}]", self.count, self.size, self.split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_split_disjoint() {
        let a = Synthetic::open(Task::Segmentation, "3x32", Split::Train).unwrap();
        let b = Synthetic::open(Task::Segmentation, "3x32", Split::Train).unwrap();
        let v = Synthetic::open(Task::Segmentation, "3x32", Split::Val).unwrap();
        let img = |d: &Synthetic, i| d.get(i).unwrap().image.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(img(&a, 1), img(&b, 1), "same seed, same scene");
        assert_ne!(img(&a, 0), img(&a, 1));
        assert_ne!(img(&a, 0), img(&v, 0), "splits draw other seeds");
        assert!(Synthetic::open(Task::Depth, "ten", Split::Train).is_err());
        assert!(Synthetic::open(Task::Depth, "10x4", Split::Train).is_err());
    }

    /// Ground depth by hand: the camera-space ray (cx, cy, 1) has unit projection on the optical
    /// axis, and meets y = 0 where its world height drops by h; with θ the pitch and
    /// b = (v + ½ − s/2)/f, its world y-slope is −(sin θ + b cos θ), so z-depth = h / (sin θ + b cos θ),
    /// the same in every column.
    #[test]
    fn empty_scene_depth_matches_geometry() {
        let size = 64;
        let (_, labels, depth) = Scene { objects: vec![] }.render(size);
        let f = (size as f64 / 2.0) / (FOV_DEG.to_radians() / 2.0).tan();
        let theta = PITCH_DEG.to_radians();
        for v in [40usize, 50, 63] {
            let b = (v as f64 + 0.5 - size as f64 / 2.0) / f;
            let want = CAMERA_HEIGHT / (theta.sin() + b * theta.cos());
            for u in [0usize, 20, 63] {
                let got = depth[v * size + u] as f64;
                assert_eq!(labels[v * size + u], 1, "({u}, {v}) sees the ground");
                assert!((got - want).abs() < 1e-5 * want, "({u}, {v}): {got} vs {want}");
            }
        }
        // The top row sees the wall, at z-depth WALL_Z / (forward component of the wall normal).
        assert_eq!(labels[0], 0, "top-left sees the wall");
        let b = (0.5 - size as f64 / 2.0) / f;
        let want = WALL_Z / (theta.cos() - b * theta.sin());
        let got = depth[32] as f64;
        assert!((got - want).abs() < 1e-5 * want, "wall: {got} vs {want}");
    }

    #[test]
    fn a_sphere_in_front_is_labelled_and_nearer() {
        let s = Scene { objects: vec![(Shape::Sphere { x: 0.0, z: 4.0, r: 0.8 }, [1.0, 0.0, 0.0])] };
        let size = 64;
        let (img, labels, depth) = s.render(size);
        let sphere: Vec<usize> = (0..size * size).filter(|&i| labels[i] == 2).collect();
        assert!(sphere.len() > 50, "the sphere is visible ({} pixels)", sphere.len());
        // The nearest sphere point lies at distance 4 - 0.8 ≥ 3.2·cos(...) from the camera plane.
        let nearest = sphere.iter().map(|&i| depth[i]).fold(f32::INFINITY, f32::min);
        assert!(nearest > 2.5 && nearest < 4.0, "{nearest}");
        // Red albedo: red channel dominates on the sphere.
        let n = size * size;
        assert!(sphere.iter().all(|&i| img[i] > img[n + i] && img[i] > img[2 * n + i]));
        assert!(depth.iter().all(|&d| d > 0.0 && d < 10.0));
    }
}
