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
imgfs_shell_test(mount_failover)
imgfs_shell_test(mount_upgrade)
imgfs_shell_test(gc_damage)
imgfs_shell_test(disk_damage)
imgfs_shell_test(mount_cache)
# -o io_uring: refused by a libfuse 3.14 build; served and logged by a 3.18 one.
imgfs_shell_test(mount_io_uring)
imgfs_shell_test(gc_rados)
imgfs_shell_test(gc_rbd)
imgfs_shell_test(rados_sharing)
imgfs_shell_test(rados_faults)
imgfs_shell_test(disk_cli)
# The largest disk on ext4, xfs, tmpfs and rbd, end to end.
imgfs_shell_test(disk_limits)
# The rbd disk backend: its own test, and the mount tests over rbd disks.
imgfs_shell_test(rbd_disks)
# Three stores on one pool: every command from every store (docs/rbd.md).
imgfs_shell_test(rbd_hosts)
# A size changed by another client shows through the mount at once.
imgfs_shell_test(rbd_size)
# Many disks and images: every listing and lookup complete and right.
imgfs_shell_test(scale_listing)
imgfs_shell_test_rbd(mount_bytes)
imgfs_shell_test_rbd(mount_qemu)
imgfs_shell_test_rbd(mount_names)
imgfs_shell_test_rbd(mount_daemon)
imgfs_shell_test_rbd(mount_failover)
imgfs_shell_test_rbd(mount_upgrade)
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
# A real guest (tools/guest/: Debian's cloud kernel, a busybox initramfs, GPT
# cloud images) booted by qemu under TCG from the mount's files. One guest at
# a time: each takes a core for its boot.
imgfs_shell_test(guest_seed)
imgfs_shell_test_rbd(guest_seed)
imgfs_shell_test(guest_online)
imgfs_shell_test_rbd(guest_online)
# The store's file system fills up under a running guest (local disks only).
imgfs_shell_test(guest_full)
# The cluster stops answering while the guest flushes (rbd disks only; a
# cluster of its own).
imgfs_shell_test_rbd(guest_flush)
imgfs_shell_test(guest_libvirt)
imgfs_shell_test_rbd(guest_libvirt)
set_tests_properties(integration/guest_seed integration/guest_seed@rbd
  integration/guest_online integration/guest_online@rbd integration/guest_full
  integration/guest_flush@rbd PROPERTIES RESOURCE_LOCK guest)
# guest_libvirt also uses the host's one /run/libvirt, like e2e_libvirt.
set_tests_properties(integration/guest_libvirt integration/guest_libvirt@rbd
  PROPERTIES RESOURCE_LOCK "guest;libvirtd")
# Live migration (tests/integration/migrate_*.sh): two stores and mounts, two qemus.
imgfs_shell_test(migrate_rbd)
imgfs_shell_test(migrate_two_writers)
imgfs_shell_test(migrate_local)
# The Debian package: built, installed with dpkg -i on this machine, used and
# purged (also on failure). One dpkg at a time.
imgfs_shell_test(package_deb)
set_tests_properties(integration/package_deb PROPERTIES RESOURCE_LOCK dpkg LABELS "integration;package")
# Operations: imgfs stats, the metrics, the log under logrotate.
imgfs_shell_test(stats_cli)
imgfs_shell_test(mount_metrics)
imgfs_shell_test_rbd(mount_metrics)
imgfs_shell_test(mount_logrotate)
