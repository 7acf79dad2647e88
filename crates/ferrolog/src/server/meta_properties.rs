//! `meta.properties` in the data directory: which node and cluster the data belongs to, as
//! in Kafka. A node started on another node's data directory (a wrong `--node-id`, a
//! mixed-up volume) would otherwise take that data for its own, or wipe it as foreign.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

const FILE_NAME: &str = "meta.properties";

/// Checks the data directory against this node's id and the metadata's cluster id, and
/// records both on first start.
pub fn check_or_write(data_dir: &Path, node_id: i32, cluster_id: &str) -> anyhow::Result<()> {
    let path = data_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value = |key: &str| {
                text.lines()
                    .filter_map(|l| l.split_once('='))
                    .find(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_owned())
            };
            let found_node =
                value("node.id").with_context(|| format!("{} has no node.id", path.display()))?;
            if found_node != node_id.to_string() {
                bail!(
                    "data directory {} belongs to node {found_node}, but this node is {node_id}; \
                     start it with --node-id {found_node} or give it its own data directory",
                    data_dir.display()
                );
            }
            let found_cluster = value("cluster.id")
                .with_context(|| format!("{} has no cluster.id", path.display()))?;
            if found_cluster != cluster_id {
                bail!(
                    "data directory {} belongs to cluster {found_cluster}, but its metadata is of \
                     cluster {cluster_id}; the directory was mixed up with another node's",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = path.with_extension("tmp");
            let mut file = std::fs::File::create(&tmp).context("create meta.properties")?;
            writeln!(
                file,
                "version=1\nnode.id={node_id}\ncluster.id={cluster_id}"
            )
            .context("write meta.properties")?;
            file.sync_all().context("sync meta.properties")?;
            std::fs::rename(&tmp, &path).context("install meta.properties")?;
            std::fs::File::open(data_dir)
                .and_then(|d| d.sync_all())
                .context("sync data directory")?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_refuses_another_node_id_or_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_or_write(dir.path(), 1, "c1").expect("first start writes the file");
        check_or_write(dir.path(), 1, "c1").expect("same node starts again");
        let err = check_or_write(dir.path(), 2, "c1").expect_err("other node");
        assert!(err.to_string().contains("belongs to node 1"), "{err}");
        let err = check_or_write(dir.path(), 1, "c2").expect_err("other cluster");
        assert!(err.to_string().contains("belongs to cluster c1"), "{err}");
    }
}
