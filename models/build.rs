//! With the `cuda` feature, compiles the fused attention kernel (src/attention.cu) to PTX for
//! CUDA_COMPUTE_CAP (or the visible GPU's), which src/cuda_attention.rs loads at run time.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    {
        println!("cargo::rerun-if-changed=src/attention.cu");
        cudaforge::KernelBuilder::new()
            .source_files(["src/attention.cu"])
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()
            .expect("compiling src/attention.cu with nvcc (the cuda feature needs the CUDA toolkit: see tools/build-cuda.sh)");
    }
}
