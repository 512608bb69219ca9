"""Names defined once: where a stdlib-only module must spell one again, a test keeps the two equal."""

from sdtask.constants import DEFAULT_IMAGE, MANAGER, OPERATOR_NAME
from sdtask.devcluster import images


def test_the_image_make_image_builds_is_the_one_the_operator_puts_in_runtime_pods() -> None:
    assert images.DEFAULT_TAG == DEFAULT_IMAGE
    assert DEFAULT_IMAGE.startswith(f"{OPERATOR_NAME}:") and MANAGER == OPERATOR_NAME
