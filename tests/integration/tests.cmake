# One line per integration test script in this folder.
imgfs_shell_test(cli_basics)
imgfs_shell_test(ceph_cluster)
imgfs_shell_test(image_import)
# The mount (tests/integration/mount_*.sh); store options from IMGFS_TEST_INIT_ARGS.
imgfs_shell_test(mount_bytes)
imgfs_shell_test(mount_qemu)
imgfs_shell_test(mount_names)
imgfs_shell_test(mount_daemon)
imgfs_shell_test(mount_fstab)
imgfs_shell_test(gc_damage)
imgfs_shell_test(mount_cache)
imgfs_shell_test(gc_rados)
imgfs_shell_test(gc_rbd)
imgfs_shell_test(rados_sharing)
imgfs_shell_test(rados_faults)
imgfs_shell_test(disk_cli)
# The rbd disk backend: its own test, and the mount tests over rbd disks.
imgfs_shell_test(rbd_disks)
imgfs_shell_test_rbd(mount_bytes)
imgfs_shell_test_rbd(mount_qemu)
imgfs_shell_test_rbd(mount_names)
imgfs_shell_test_rbd(mount_daemon)
# End to end (tests/integration/e2e_*.sh), on local and on rbd disks.
imgfs_shell_test(e2e_flow)
imgfs_shell_test_rbd(e2e_flow)
imgfs_shell_test(e2e_qemu)
imgfs_shell_test_rbd(e2e_qemu)
imgfs_shell_test(e2e_libvirt)
imgfs_shell_test_rbd(e2e_libvirt)
# Both use the host's one /run/libvirt.
set_tests_properties(integration/e2e_libvirt integration/e2e_libvirt@rbd
  PROPERTIES RESOURCE_LOCK libvirtd)
# Live migration (tests/integration/migrate_*.sh): two stores and mounts, two qemus.
imgfs_shell_test(migrate_rbd)
imgfs_shell_test(migrate_two_writers)
imgfs_shell_test(migrate_local)
