// qemu-img's `-o` text for `create -f qcow2`: tokenizing, merging repeated -o, typing into CreateOptions, and `-o help`.

import { invalidOption, Qcow2Error } from '../model/errors';
import type { CompressionType, Compat, CreateOptions, Preallocation, RawCreateOptions } from '../model/options';
import type { AmendRequest } from '../rules/types';
import { createOnlyRefusal } from '../rules/amend';
import { CREATE_OPTIONS, optionSpec } from '../model/names';
import { parseSize, parseSizeOption, strtoull, type WarningSink } from '../model/size';

export { parseOptionList, type OptionPair } from '../model/qemu-opts';
import type { OptionPair } from '../model/qemu-opts';

/**
 * qemu-img's is_valid_option_list(): a list that can be joined to another with ',' without
 * changing meaning. Empty lists, a leading ',' and an odd run of trailing ',' are refused.
 */
export function isValidOptionList(text: string): boolean {
  if (text === '' || text.startsWith(',')) return false;
  const trailing = text.length - text.replace(/,+$/, '').length;
  return trailing % 2 === 0;
}

/**
 * Joins the values of repeated `-o` options the way qemu-img's accumulate_options() does: with
 * ','. Later items override earlier ones once parsed. Throws qemu-img's `Invalid option list: X`
 * (printed as `qemu-img: Invalid option list: X`, no file name) for the first unjoinable list.
 */
export function mergeOptionLists(lists: string[]): string {
  for (const list of lists) {
    if (!isValidOptionList(list)) throw invalidOption(`Invalid option list: ${list}`);
  }
  return lists.join(',');
}

/** qemu-img prints the option help instead of doing anything when any item is a bare `help` or `?`. */
export function hasHelpOption(pairs: OptionPair[]): boolean {
  return pairs.some(([key, value]) => value === undefined && (key === 'help' || key === '?'));
}

/** One `-o help` line: `  name=<type>` padded to 24 columns, then the help text. */
function helpLine(name: string, type: string, help: string): string {
  return `  ${name}=<${type}>`.padEnd(24) + ` - ${help}\n`;
}

const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

const PROTOCOL_NOTE = '\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n';

/** raw's create options: the format's own (size), then with a file name the file protocol's. */
const RAW_HELP: ReadonlyArray<{ name: string; type: string; help: string; protocol?: boolean }> = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'extent_size_hint', type: 'size', help: 'Extent size hint for the image file, 0 to disable', protocol: true },
  { name: 'nocow', type: 'bool (on/off)', help: 'Turn off copy-on-write (valid only on btrfs)', protocol: true },
  { name: 'preallocation', type: 'str', help: 'Preallocation mode (allowed values: off, falloc, full)', protocol: true },
];

/**
 * `qemu-img create -f FMT -o help [FILE]` (and convert's): with a file name, `Supported
 * options:` and the format's options merged with the file protocol's; without one, `Supported
 * FMT options:`, the format's own, and QEMU's note about the protocol level. Sorted by name, as
 * qemu_opts_print_help prints them. The encryption options are listed, as qemu-img lists them;
 * using one is refused.
 */
export function createOptionsHelp(fmt: 'qcow2' | 'raw' = 'qcow2', withFile = true): string {
  const list = (fmt === 'raw' ? RAW_HELP : CREATE_OPTIONS).filter((d) => withFile || !d.protocol);
  const lines = [...list].sort(byName).map((d) => helpLine(d.name, d.type, d.help)).join('');
  return withFile ? `Supported options:\n${lines}` : `Supported ${fmt} options:\n${lines}${PROTOCOL_NOTE}`;
}

/** qcow2's amend-only encryption options (qcow2_amend_opts), listed by `amend -o help`. */
const AMEND_ENCRYPTION_HELP = [
  { name: 'encrypt.iter-time', type: 'num', help: 'Time to spend in PBKDF in milliseconds' },
  { name: 'encrypt.keyslot', type: 'num', help: 'Select a single keyslot to modify explicitly' },
  { name: 'encrypt.new-secret', type: 'str', help: 'New secret to set in the matching keyslots. Empty string to erase' },
  { name: 'encrypt.old-secret', type: 'str', help: 'Select all keyslots that match this password' },
  { name: 'encrypt.state', type: 'str', help: 'Select new state of affected keyslots (active/inactive)' },
];

/** `qemu-img amend -f qcow2 -o help FILE`: the options amend understands (encryption ones listed, refused when used). */
export function amendOptionsHelp(): string {
  const list = [...CREATE_OPTIONS.filter((d) => !d.createOnly), ...AMEND_ENCRYPTION_HELP].sort(byName);
  return `Amend options for 'qcow2':\n${list.map((d) => helpLine(d.name, d.type, d.help)).join('')}`;
}

// BlockdevDriver as compiled into Debian's qemu-img 7.2: the values the create visitor accepts for backing-fmt.
const BLOCKDEV_DRIVERS = new Set(
  (
    'blkdebug blklogwrites blkreplay blkverify bochs cloop compress copy-before-write copy-on-read dmg file ' +
    'snapshot-access ftp ftps gluster host_cdrom host_device http https iscsi luks nbd nfs null-aio null-co ' +
    'nvme parallels preallocate qcow qcow2 qed quorum raw rbd replication ssh throttle vdi vhdx vmdk vpc vvfat'
  ).split(' '),
);

// `qemu-img --help` "Supported formats": the drivers bdrv_open finds by name when it opens the backing file.
const REGISTERED_DRIVERS = new Set(
  (
    'blkdebug blklogwrites blkverify bochs cloop compress copy-before-write copy-on-read dmg file ftp ftps ' +
    'gluster host_cdrom host_device http https iscsi iser luks nbd nfs null-aio null-co nvme parallels ' +
    'preallocate qcow qcow2 qed quorum raw rbd replication snapshot-access ssh throttle vdi vhdx vmdk vpc vvfat'
  ).split(' '),
);

const PREALLOCATION: readonly Preallocation[] = ['off', 'metadata', 'falloc', 'full'];
const COMPRESSION: readonly CompressionType[] = ['zlib', 'zstd'];
const COMPAT: Record<string, Compat> = { '0.10': '0.10', v2: '0.10', '1.1': '1.1', v3: '1.1' };
const TRUE_WORDS = ['on', 'yes', 'true', 'y'];
const FALSE_WORDS = ['off', 'no', 'false', 'n'];
const I64_MAX = (1n << 63n) - 1n;
const U32_MAX = 0xffffffffn;
const U64_MAX = (1n << 64n) - 1n;

const afterFormatting = new WeakSet<object>();

/**
 * True for errors that qemu-img reports only after it has printed its `Formatting '...'` line
 * (they come from the qcow2 driver, not from option parsing). A CLI that mirrors qemu-img's
 * output prints that line before such an error.
 */
export function raisedAfterFormatting(e: unknown): boolean {
  return typeof e === 'object' && e !== null && afterFormatting.has(e);
}

function driverError(message: string, property: string): Qcow2Error {
  const e = invalidOption(message, property);
  afterFormatting.add(e);
  return e;
}

export interface ToCreateOptionsExtra {
  /** qemu-img's `-u`: the backing file is not opened, so backing_fmt is only checked by name later. */
  unsafe?: boolean;
  /** Deprecation warnings (hex with a suffix), once per parse as qemu-img prints them. */
  onWarning?: WarningSink;
}

/**
 * Turns parsed `-o` items (and the positional SIZE) into CreateOptions, with qemu-img 7.2's
 * messages and its order of checks. Only the values are checked; combination rules (lazy
 * refcounts on compat 0.10, data_file_raw without data_file, cluster size range, refcount width,
 * missing size, ...) belong to provider/rules.
 *
 * - A bare `key` means key=on and a bare `nokey` means key=off; `id` items are ignored.
 * - The last occurrence of a key wins, but every occurrence must be valid.
 * - `-b FILE` / `-F FMT` override `backing_file=` / `backing_fmt=` in qemu-img: pass them as
 *   extra trailing pairs `['backing_file', FILE]`, `['backing_fmt', FMT]`.
 * - SIZE both positional and in -o is an error (`The image size must be specified only once`).
 * - A bad positional SIZE throws parseSize's plain Error (no file name in qemu's output); all
 *   other failures throw INVALID_OPTION Qcow2Errors (qemu prints `qemu-img: FILE: message`).
 * - `encryption=off`, `nocow=off` and `extent_size_hint` are accepted and have no effect here
 *   (the hint is best effort in qemu too); encryption and `nocow=on` are refused as unsupported.
 */
export function toCreateOptions(
  pairs: OptionPair[],
  positionalSize?: string,
  extra: ToCreateOptionsExtra = {},
): CreateOptions {
  const { onWarning } = extra;
  const out: CreateOptions = {};
  // img_create parses SIZE before it looks at -o.
  if (positionalSize !== undefined) out.size = parseSize(positionalSize, { onWarning });

  // QemuOpts stage: every item in order, unknown keys and typed values.
  const raw = new Map<string, string>();
  const sizes = new Map<string, bigint>();
  const bools = new Map<string, boolean>();
  for (const [rawKey, rawValue] of pairs) {
    let key = rawKey;
    let value = rawValue;
    if (value === undefined) {
      if (key.startsWith('no')) {
        key = key.slice(2);
        value = 'off';
      } else {
        value = 'on';
      }
    }
    if (key === 'id') continue;
    const desc = optionSpec(key);
    if (desc === undefined) throw invalidOption(`Invalid parameter '${key}'`, key);
    switch (desc.type) {
      case 'bool (on/off)':
        bools.set(key, parseBool(key, value));
        break;
      case 'num':
        parseNumber(key, value);
        break;
      case 'size':
        sizes.set(key, parseSizeOption(key, value, onWarning));
        break;
      case 'str':
        break;
    }
    raw.set(key, value);
  }

  // bdrv_img_create stage.
  if (raw.has('size') && positionalSize !== undefined) {
    throw invalidOption('The image size must be specified only once', 'size');
  }
  const backingFile = raw.get('backing_file');
  const backingFormat = raw.get('backing_fmt');
  if (backingFile === '') throw invalidOption('Expected backing file name, got empty string', 'backing_file');
  if (backingFile !== undefined && backingFormat !== undefined && !extra.unsafe && !REGISTERED_DRIVERS.has(backingFormat)) {
    throw invalidOption(`Unknown driver '${backingFormat}'\nCould not open backing image.`, 'backing_fmt');
  }

  // qcow2_co_create_opts stage, after "Formatting ...": legacy encryption spelling first.
  const encryption = raw.get('encryption');
  const encryptKeys = [...raw.keys()].filter((k) => k.startsWith('encrypt.'));
  let encryptFormat = raw.get('encrypt.format');
  if (encryptFormat === 'aes') encryptFormat = 'qcow';
  // Only the exact words on/off are translated; yes/no/true/false/y/n reach the visitor verbatim.
  const encryptionAlias = encryption === 'off' ? undefined : encryption === 'on' ? 'qcow' : encryption;
  if (encryptionAlias !== undefined && encryptFormat !== undefined) {
    throw driverError("'encrypt.format' and its alias 'encryption' can't be used at the same time", 'encryption');
  }
  // The protocol layer creates the image file (and the data file) before the qcow2 options are typed.
  const hint = sizes.get('extent_size_hint');
  if (hint !== undefined && hint > U32_MAX) throw driverError('Extent size hint is too large', 'extent_size_hint');
  if (bools.get('nocow') === true) {
    throw driverError("Option 'nocow' is not supported: this implementation cannot set file attributes", 'nocow');
  }
  const dataFile = raw.get('data_file');
  if (dataFile === '') throw driverError("Could not create '': No such file or directory", 'data_file');

  // QAPI visitor stage, in BlockdevCreateOptionsQcow2 field order; size values are parsed again.
  if (raw.has('size')) parseSizeOption('size', raw.get('size') ?? '', onWarning);
  const compat = raw.get('compat');
  if (compat !== undefined) {
    const level = Object.hasOwn(COMPAT, compat) ? COMPAT[compat] : undefined;
    if (level === undefined) {
      throw driverError(`Parameter 'version' does not accept value '${compat}'`, 'compat');
    }
    out.compat = level;
  }
  if (backingFormat !== undefined && !BLOCKDEV_DRIVERS.has(backingFormat)) {
    throw driverError(`Parameter 'backing-fmt' does not accept value '${backingFormat}'`, 'backing_fmt');
  }
  const effectiveEncryptFormat = encryptionAlias ?? encryptFormat;
  const wantsEncryption = effectiveEncryptFormat !== undefined || encryptKeys.length > 0;
  if (wantsEncryption) {
    if (effectiveEncryptFormat === undefined) {
      throw driverError("Parameter 'encrypt.format' is missing", 'encrypt.format');
    }
    if (effectiveEncryptFormat !== 'qcow' && effectiveEncryptFormat !== 'luks') {
      throw driverError(
        `Parameter 'format' does not accept value '${effectiveEncryptFormat}'`,
        encryptionAlias !== undefined ? 'encryption' : 'encrypt.format',
      );
    }
  }
  if (raw.has('cluster_size')) parseSizeOption('cluster_size', raw.get('cluster_size') ?? '', onWarning);
  const preallocation = raw.get('preallocation');
  if (preallocation !== undefined) {
    if (!(PREALLOCATION as readonly string[]).includes(preallocation)) {
      throw driverError(`Parameter 'preallocation' does not accept value '${preallocation}'`, 'preallocation');
    }
    out.preallocation = preallocation as Preallocation;
  }
  const refcountBits = raw.get('refcount_bits');
  if (refcountBits !== undefined) out.refcountBits = Number(parseInt64(refcountBits));
  const compression = raw.get('compression_type');
  if (compression !== undefined) {
    if (!(COMPRESSION as readonly string[]).includes(compression)) {
      throw driverError(`Parameter 'compression-type' does not accept value '${compression}'`, 'compression_type');
    }
    out.compressionType = compression as CompressionType;
  }
  // qemu fails here for want of encrypt.key-secret; we fail for want of encryption support.
  if (wantsEncryption) {
    throw driverError(
      'Encrypted images are not supported by this implementation',
      encryptionAlias !== undefined ? 'encryption' : 'encrypt.format',
    );
  }

  const size = sizes.get('size');
  // bdrv_img_create uses (uint64_t)-1 as "no size given", so size=2^64-1 behaves exactly like no
  // size: taken from the backing file, or "Image creation needs a size parameter".
  if (size !== undefined && size !== U64_MAX) out.size = size;
  const clusterSize = sizes.get('cluster_size');
  if (clusterSize !== undefined) out.clusterSize = Number(clusterSize);
  if (backingFile !== undefined) out.backingFile = backingFile;
  if (backingFormat !== undefined) out.backingFormat = backingFormat;
  if (dataFile !== undefined) out.dataFile = dataFile;
  const dataFileRaw = bools.get('data_file_raw');
  if (dataFileRaw !== undefined) out.dataFileRaw = dataFileRaw;
  const lazyRefcounts = bools.get('lazy_refcounts');
  if (lazyRefcounts !== undefined) out.lazyRefcounts = lazyRefcounts;
  const extendedL2 = bools.get('extended_l2');
  if (extendedL2 !== undefined) out.extendedL2 = extendedL2;
  return out;
}

/**
 * Turns parsed `create -f raw -o` items (and the positional SIZE) into RawCreateOptions:
 * size and preallocation; `nocow=off` and `extent_size_hint` are accepted (no effect here),
 * anything else is qemu-img's `Invalid parameter`. Values are checked as qemu-img checks them;
 * which preallocation modes raw allows is provider/rules' call.
 */
export function toRawCreateOptions(pairs: OptionPair[], positionalSize?: string, extra: ToCreateOptionsExtra = {}): RawCreateOptions {
  const out: RawCreateOptions = {};
  if (positionalSize !== undefined) out.size = parseSize(positionalSize, { onWarning: extra.onWarning });
  let size: bigint | undefined;
  let nocow = false;
  for (const [rawKey, rawValue] of pairs) {
    let key = rawKey;
    let value = rawValue;
    if (value === undefined) {
      if (key.startsWith('no') && key !== 'nocow') { key = key.slice(2); value = 'off'; } else value = 'on';
    }
    if (key === 'id') continue;
    switch (key) {
      case 'size': size = parseSizeOption(key, value, extra.onWarning); break;
      case 'extent_size_hint': parseSizeOption(key, value, extra.onWarning); break;
      case 'nocow': nocow = parseBool(key, value); break;
      case 'preallocation': out.preallocation = value; break;
      default: throw invalidOption(`Invalid parameter '${key}'`, key);
    }
  }
  if (size !== undefined && positionalSize !== undefined) throw invalidOption('The image size must be specified only once', 'size');
  if (size !== undefined) out.size = size;
  if (out.preallocation !== undefined && !(PREALLOCATION as readonly string[]).includes(out.preallocation)) {
    throw driverError(`invalid parameter value: ${out.preallocation}`, 'preallocation');
  }
  if (nocow) throw driverError("Option 'nocow' is not supported: this implementation cannot set file attributes", 'nocow');
  return out;
}

/** qapi_bool_parse: case-sensitive on/yes/true/y and off/no/false/n. */
function parseBool(key: string, value: string): boolean {
  if (TRUE_WORDS.includes(value)) return true;
  if (FALSE_WORDS.includes(value)) return false;
  throw invalidOption(`Parameter '${key}' expects 'on' or 'off'`, key);
}

/** QemuOpts parse_option_number: qemu_strtou64 base 0, so "-1" wraps instead of failing. */
function parseNumber(key: string, value: string): bigint {
  const r = strtoull(value, 0, 0);
  if (r.noConversion || r.end < value.length) throw invalidOption(`Parameter '${key}' expects a number`, key);
  if (r.erange) throw invalidOption(`Value '${value}' is too large for parameter '${key}'`, key);
  return r.value;
}

/** The visitor reads refcount-bits as int64 from the same text (qemu_strtoi64 base 0). */
function parseInt64(value: string): bigint {
  const r = strtoull(value, 0, 0);
  const limit = r.negative ? I64_MAX + 1n : I64_MAX;
  if (r.magnitude > limit) throw driverError("Parameter 'refcount-bits' expects integer", 'refcount_bits');
  return r.negative ? -r.magnitude : r.magnitude;
}


/**
 * Turns parsed `amend -o` items into an AmendRequest with qemu-img's per-option messages:
 * create-only options get `Invalid parameter 'X'` + `This option is only supported for image
 * creation`; whether the amend as a whole is legal is provider/rules' call.
 */
export function toAmendRequest(pairs: OptionPair[]): AmendRequest {
  const out: AmendRequest = {};
  for (const [rawKey, rawValue] of pairs) {
    let key = rawKey;
    let value = rawValue;
    if (value === undefined) {
      if (key.startsWith('no')) { key = key.slice(2); value = 'off'; } else value = 'on';
    }
    if (key === 'id') continue;
    // The amendable options are the create options that are not create-only (model/names.ts).
    const createOnly = createOnlyRefusal(key);
    if (createOnly) throw invalidOption(createOnly.message, key);
    if (optionSpec(key) === undefined) throw invalidOption(`Invalid parameter '${key}'`, key);
    switch (key) {
      case 'size': {
        // qemu-img amend reads size=0 as "no size given".
        const size = parseSizeOption('size', value);
        if (size !== 0n) out.size = size;
        break;
      }
      case 'compat': {
        const level = Object.prototype.hasOwnProperty.call(COMPAT, value) ? COMPAT[value] : undefined;
        if (level === undefined) throw invalidOption(`Unknown compatibility level ${value}`, 'compat');
        out.compat = level;
        break;
      }
      case 'backing_file': out.backingFile = value; break;
      case 'backing_fmt': out.backingFormat = value; break;
      case 'data_file': out.dataFile = value; break;
      case 'data_file_raw': out.dataFileRaw = parseBool(key, value); break;
      case 'lazy_refcounts': out.lazyRefcounts = parseBool(key, value); break;
      case 'refcount_bits': out.refcountBits = Number(parseNumber(key, value)); break;
    }
  }
  return out;
}
