# One line per integration test script in this folder.
imgfs_shell_test(cli_basics)
imgfs_shell_test(ceph_cluster)
imgfs_shell_test(image_import)
# The mount (tests/integration/mount_*.sh); store options from IMGFS_TEST_INIT_ARGS.
imgfs_shell_test(mount_bytes)
imgfs_shell_test(mount_qemu)
imgfs_shell_test(mount_names)
imgfs_shell_test(mount_daemon)
imgfs_shell_test(gc_damage)
imgfs_shell_test(rados_sharing)
imgfs_shell_test(rados_faults)
imgfs_shell_test(disk_cli)
# The rbd disk backend: its own test, and the mount tests over rbd disks.
imgfs_shell_test(rbd_disks)
imgfs_shell_test_rbd(mount_bytes)
imgfs_shell_test_rbd(mount_qemu)
imgfs_shell_test_rbd(mount_names)
imgfs_shell_test_rbd(mount_daemon)
# End to end (tests/integration/e2e_*.sh), each on local and on rbd disks
# (IMGFS_E2E_DISKS; the rbd one uses the cluster tools/test.sh provides).
function(imgfs_e2e_test name)
  foreach(disks local rbd)
    add_test(NAME integration/${name}_${disks}
      COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/${name}.sh)
    set_tests_properties(integration/${name}_${disks} PROPERTIES
      LABELS "integration;e2e"
      ENVIRONMENT "IMGFS=$<TARGET_FILE:imgfs>;IMGFS_SRC=${CMAKE_SOURCE_DIR};IMGFS_BUILD=${CMAKE_BINARY_DIR};IMGFS_E2E_DISKS=${disks}")
  endforeach()
endfunction()
imgfs_e2e_test(e2e_flow)
imgfs_e2e_test(e2e_qemu)
imgfs_e2e_test(e2e_libvirt)
# Both use the host's one /run/libvirt.
set_tests_properties(integration/e2e_libvirt_local integration/e2e_libvirt_rbd
  PROPERTIES RESOURCE_LOCK libvirtd)
