# The command line skeleton: help everywhere, usage errors are one line and
# exit 2, bad global input is refused.
source "$(dirname "$0")/lib.sh"

"$IMGFS" --help | grep -q "image" || fail "--help lists no image command"
for sub in init stats fsck gc mount "image" "image import" "image ls" "image info" \
    "image rm" "image verify" "image name" "disk" "disk create" "disk ls" "disk info" \
    "disk resize" "disk rm"; do
  # shellcheck disable=SC2086
  "$IMGFS" $sub --help >/dev/null || fail "$sub --help failed"
done

rc=0; "$IMGFS" no-such-command 2>"$T/err" || rc=$?
[[ $rc -eq 2 ]] || fail "unknown command exit $rc, want 2"
[[ $(wc -l <"$T/err") -eq 1 ]] || fail "unknown command printed more than one line"
rc=0; "$IMGFS" 2>"$T/err" >/dev/null || rc=$?
[[ $rc -ne 0 ]] || fail "no command succeeded"
echo "cli_basics: ok"
