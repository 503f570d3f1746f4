// The one table of qemu-img's qcow2 create options (`-o` names) and the resource property each
// one is (data_file_raw <-> dataFileRaw): which are create-only, which amend understands, their
// `-o help` text and QEMU's option-list order (the order of the `Formatting ...` line). The CLI,
// provider/rules, the resource's check and the qemu-img engine all read names from here.

/** A qcow2 create option as qemu-img spells it in `-o`. */
export type OptionName =
  | 'size' | 'compat' | 'backing_file' | 'backing_fmt' | 'data_file' | 'data_file_raw' | 'encryption' | 'encrypt.format'
  | 'encrypt.key-secret' | 'encrypt.cipher-alg' | 'encrypt.cipher-mode' | 'encrypt.ivgen-alg' | 'encrypt.ivgen-hash-alg'
  | 'encrypt.hash-alg' | 'encrypt.iter-time' | 'cluster_size' | 'preallocation' | 'lazy_refcounts' | 'refcount_bits'
  | 'compression_type' | 'extended_l2' | 'nocow' | 'extent_size_hint';

/** An Image property (resource input) that is a create option. */
export type PropertyName =
  | 'size' | 'compat' | 'backingFile' | 'backingFormat' | 'dataFile' | 'dataFileRaw' | 'clusterSize' | 'preallocation'
  | 'lazyRefcounts' | 'refcountBits' | 'compressionType' | 'extendedL2';

export type OptionType = 'str' | 'bool (on/off)' | 'num' | 'size';

export interface OptionSpec {
  name: OptionName;
  /** The Image property it is, when the resource manages it. */
  property?: PropertyName;
  type: OptionType;
  /** `-o help` text (qcow2_create_opts and file-posix's raw_create_opts). */
  help: string;
  /** Only create understands it: amend answers `Invalid parameter` + `only supported for image creation`. */
  createOnly: boolean;
  /** The file protocol's option: `-o help` lists it only when a file name is given. */
  protocol?: boolean;
  /** Printed on the `Formatting ...` line (with this default when unset). */
  formatting?: { default?: string };
}

// In QEMU's option-list order (qcow2_create_opts with the file protocol's merged in), which is
// the order of the `Formatting ...` line: encryption first, nocow and extent_size_hint last.
export const CREATE_OPTIONS: readonly OptionSpec[] = [
  { name: 'encryption', type: 'bool (on/off)', help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)", createOnly: true, formatting: {} },
  { name: 'encrypt.format', type: 'str', help: "Encrypt the image, format choices: 'aes', 'luks'", createOnly: true, formatting: {} },
  { name: 'encrypt.key-secret', type: 'str', help: 'ID of secret providing qcow AES key or LUKS passphrase', createOnly: true },
  { name: 'encrypt.cipher-alg', type: 'str', help: 'Name of encryption cipher algorithm', createOnly: true },
  { name: 'encrypt.cipher-mode', type: 'str', help: 'Name of encryption cipher mode', createOnly: true },
  { name: 'encrypt.ivgen-alg', type: 'str', help: 'Name of IV generator algorithm', createOnly: true },
  { name: 'encrypt.ivgen-hash-alg', type: 'str', help: 'Name of IV generator hash algorithm', createOnly: true },
  { name: 'encrypt.hash-alg', type: 'str', help: 'Name of encryption hash algorithm', createOnly: true },
  { name: 'encrypt.iter-time', type: 'num', help: 'Time to spend in PBKDF in milliseconds', createOnly: true },
  { name: 'cluster_size', property: 'clusterSize', type: 'size', help: 'qcow2 cluster size', createOnly: true, formatting: { default: '65536' } },
  { name: 'extended_l2', property: 'extendedL2', type: 'bool (on/off)', help: 'Extended L2 tables', createOnly: true, formatting: { default: 'off' } },
  { name: 'preallocation', property: 'preallocation', type: 'str', help: 'Preallocation mode (allowed values: off, metadata, falloc, full)', createOnly: true, formatting: {} },
  { name: 'compression_type', property: 'compressionType', type: 'str', help: 'Compression method used for image cluster compression', createOnly: true, formatting: { default: 'zlib' } },
  { name: 'size', property: 'size', type: 'size', help: 'Virtual disk size', createOnly: false, formatting: {} },
  { name: 'compat', property: 'compat', type: 'str', help: 'Compatibility level (v2 [0.10] or v3 [1.1])', createOnly: false, formatting: {} },
  { name: 'backing_file', property: 'backingFile', type: 'str', help: 'File name of a base image', createOnly: false, formatting: {} },
  { name: 'backing_fmt', property: 'backingFormat', type: 'str', help: 'Image format of the base image', createOnly: false, formatting: {} },
  { name: 'data_file', property: 'dataFile', type: 'str', help: 'File name of an external data file', createOnly: false, formatting: {} },
  { name: 'data_file_raw', property: 'dataFileRaw', type: 'bool (on/off)', help: 'The external data file must stay valid as a raw image', createOnly: false, formatting: {} },
  { name: 'lazy_refcounts', property: 'lazyRefcounts', type: 'bool (on/off)', help: 'Postpone refcount updates', createOnly: false, formatting: { default: 'off' } },
  { name: 'refcount_bits', property: 'refcountBits', type: 'num', help: 'Width of a reference count entry in bits', createOnly: false, formatting: { default: '16' } },
  { name: 'nocow', type: 'bool (on/off)', help: 'Turn off copy-on-write (valid only on btrfs)', createOnly: true, protocol: true, formatting: {} },
  { name: 'extent_size_hint', type: 'size', help: 'Extent size hint for the image file, 0 to disable', createOnly: true, protocol: true, formatting: {} },
];

const BY_NAME = new Map<string, OptionSpec>(CREATE_OPTIONS.map((o) => [o.name, o]));
const BY_PROPERTY = new Map<string, OptionSpec>(CREATE_OPTIONS.filter((o) => o.property).map((o) => [o.property!, o]));

/** The create option called `name`, or undefined when qemu-img has none. */
export function optionSpec(name: string): OptionSpec | undefined {
  return BY_NAME.get(name);
}

/** The resource property of an option (`data_file_raw` -> `dataFileRaw`); other names come back as given. */
export function propertyOf(option: string): string {
  return BY_NAME.get(option)?.property ?? option;
}

/** The `-o` name of a property (`dataFileRaw` -> `data_file_raw`). */
export function optionOf(property: PropertyName): OptionName {
  return BY_PROPERTY.get(property)!.name;
}

/** True for options only create understands (amend refuses them). */
export function isCreateOnly(option: string): boolean {
  return BY_NAME.get(option)?.createOnly ?? option.startsWith('encrypt.');
}

/** The resource properties that only a new image can change (the managed create-only options). */
export const CREATE_ONLY_PROPERTIES: readonly PropertyName[] = CREATE_OPTIONS.filter((o) => o.createOnly && o.property).map((o) => o.property!);
