//! A node whose client port another process already listens on refuses to
//! start, naming the port: the cores bind with SO_REUSEPORT, which the
//! kernel would also grant to a second process of the same user, silently
//! splitting the connections between the two.

use ourchat_testkit::start_node;

#[test]
fn a_second_node_on_a_taken_client_port_refuses_to_start() {
    let first = start_node!(1);
    let data = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ourchat"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .arg("--listen")
        .arg(first.addr.to_string())
        .args([
            "--set",
            "server.admin_listen=",
            "--set",
            "server.grpc_listen=",
        ])
        .args(["--set", "server.pin_cores=false", "--cores", "1"])
        .output()
        .expect("run ourchat serve");
    assert!(
        !output.status.success(),
        "a second node started on a taken port"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains(&first.addr.to_string()),
        "{stderr}"
    );
}
