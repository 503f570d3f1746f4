// Remote hosts over SSH: connections (pooled, host keys verified), exec with one quoter, SFTP with
// pipelined requests, and QEMU's image locks held on the host by a helper.

export type { ConnectionArgs, ProxyConnectionArgs, ResolvedConnection } from './connection';
export { resolveConnection } from './connection';
export { fingerprint, hostKeyPolicy, knownHostsName, parseHostKey } from './hostkeys';
export type { ExecOptions, ExecResult, PoolOptions, PoolStats, RemoteProcess } from './pool';
export { SshConnection, SshPool, sshPool } from './pool';
export { shellCommand, shellQuote } from './quote';
export type { OpenMode, ReadRange, RemoteStat, SftpExtensions, SftpLimits, SftpStats, StatVfs, WriteRange } from './sftp';
export { Sftp, SftpFile } from './sftp';
export type { HelperExtent, HelperStat, RemoteImageLock, RemoteLockHolder } from './lock';
export { HostHelper, lockRemoteImage } from './lock';
