//! Generates the keygate.v1 tonic/prost code, and the subset of Envoy's external authorization
//! API the gateway serves, with the vendored protoc, so that building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "keygate/v1/sync.proto",
            "keygate/v1/admin.proto",
            "envoy/service/auth/v3/external_auth.proto",
        ],
        &["."],
    )?;
    Ok(())
}
