"""The ground floor: file writing (atomic, one file mode), JSON conversion, locks, image listing and loading.
Imports nothing from `ad` but `ad.errors`; every other package may import it."""
from ad.io.files import PendingFile, atomic_write, file_lock, file_mode, to_jsonable, write_csv, write_json
from ad.io.resources import available_cpus, folder_name, peak_rss_mb
from ad.io.images import IMAGE_EXTENSIONS, DataFileError, list_images, load_image, load_mask

__all__ = ["PendingFile", "atomic_write", "file_lock", "file_mode", "available_cpus", "folder_name", "peak_rss_mb", "to_jsonable", "write_csv", "write_json",
           "IMAGE_EXTENSIONS", "DataFileError", "list_images", "load_image", "load_mask"]
